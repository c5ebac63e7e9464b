"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022, arXiv 2207.09519).

A training-free key-value cache built from the few-shot set, blended with zero-shot CLIP:

    F      cache keys, (M, d): each few-shot image's augmented views averaged, normalised
    L      cache values, (M, C): one-hot labels
    A      = f @ F^T                                           (N, M) affinities
    logits = s * f @ W  +  alpha * exp(-beta * (1 - A)) @ L      (N, C)

with f (N, d) normalised image features, W (d, C) the zero-shot classifier and s the
backbone's own logit scale. Tip-Adapter-F makes the keys a learnable linear layer
initialised from F (not re-normalised while training, as in the official code) and trains
it with cross-entropy at the initial (beta, alpha): AdamW lr 1e-3, eps 1e-4, weight decay
0.01 (PyTorch's default, as the official code leaves it), cosine per iteration, batch
256, 20 epochs (EuroSAT 100), one augmented view per epoch; the best epoch by val
accuracy is kept.

(beta, alpha) are then searched on val with the official grids (``search_hp``):
beta in [0.1, s0) in 200 steps, alpha in [0.1, s1) in 20 steps, (s0, s1) =
``search_scale`` per dataset in :data:`TIP_DEFAULTS`. The official values are for
CLIP's s = 100: beta's grid and initial value are multiplied by ``beta_scale`` (default
s / 100, so unchanged for OpenAI CLIP), alpha's by ``alpha_scale`` (default 1); see
:func:`.search.grid_scales` for why.

The search is vectorised (:mod:`fewclip.methods.search`) and returns the setting the
official nested loop would pick. Everything here sees only ``data.val_*`` for selection;
which split that is belongs to the run layer: its ``selection="test"`` switch reproduces
the official code, which picks Tip-Adapter-F's best epoch on the test set (and, in
``main_imagenet.py``, searches on test too). The official script finally prints the larger
of the best-epoch and the searched test accuracy; here the searched setting is the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureData, FitResult, register_method
from .cache_method import CacheMethod, CacheModule, Range
from .kernels.cache import ValueProduct, cache_term, stacked_cache_terms
from .search import SearchResult, linear_grid
from .training import adamw, fit_epochs


@dataclass(frozen=True)
class TipDefaults:
    """One row of the official configs (``configs/<dataset>.yaml``), for s = 100."""

    beta_max: float  # search_scale[0]
    alpha_max: float  # search_scale[1]
    init_beta: float
    init_alpha: float
    epochs: int = 20


TIP_DEFAULTS: dict[str, TipDefaults] = {
    "imagenet": TipDefaults(7, 3, 1, 1.17),
    "caltech101": TipDefaults(12, 5, 1, 3),
    "dtd": TipDefaults(13, 13, 1, 2),
    "eurosat": TipDefaults(12, 10, 1, 2, epochs=100),
    "fgvc_aircraft": TipDefaults(30, 30, 1, 5),
    "food101": TipDefaults(10, 10, 1, 1.17),
    "oxford_flowers": TipDefaults(50, 50, 1, 10),
    "oxford_pets": TipDefaults(7, 3, 1, 1.17),
    "stanford_cars": TipDefaults(20, 10, 1, 3),
    "sun397": TipDefaults(12, 10, 1, 1.17),
    "ucf101": TipDefaults(7, 3, 1, 3),
}
# Datasets without an official config (e.g. the offline tasks): wide ranges.
TIP_GENERIC = TipDefaults(12, 10, 1, 2)


def tip_defaults(dataset: str | None) -> TipDefaults:
    return TIP_DEFAULTS.get(dataset or "", TIP_GENERIC)


class TipTerms(NamedTuple):
    """The parts of the forward that depend on no hyper-parameter."""

    clip_logits: torch.Tensor  # (N, C) s * f @ W
    affinity: torch.Tensor  # (N, M) f @ F^T


class TipComponents(NamedTuple):
    """The forward at a given beta, before alpha blends it (see :mod:`.search`)."""

    clip_logits: torch.Tensor  # (N, C)
    cache_logits: torch.Tensor  # (N, C) exp(-beta * (1 - A)) @ L


class TipCache(CacheModule):
    """The Tip-Adapter forward; the keys are a parameter for Tip-Adapter-F.

    keys (M, d), values (M, C), classifier W (d, C), logit_scale s; built on the inputs'
    device (the value product is derived from the frozen values once, here).
    """

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        classifier: torch.Tensor,
        logit_scale: float,
        learnable_keys: bool = False,
    ) -> None:
        super().__init__()
        keys = keys.detach().clone().float()
        if learnable_keys:
            self.keys = nn.Parameter(keys)
        else:
            self.register_buffer("keys", keys, persistent=False)
        # Inputs, not state: kept out of state_dict (best-epoch snapshots hold the keys only).
        self.register_buffer("values", values.detach().clone().float(), persistent=False)
        self.register_buffer("classifier", classifier.detach().clone().float(), persistent=False)
        self.logit_scale = float(logit_scale)
        self.value_product = ValueProduct(self.values)  # L as per-class sums, built once

    def terms(self, f: torch.Tensor) -> TipTerms:
        """f (N, d) -> s * f @ W (N, C) and affinities f @ F^T (N, M)."""
        return TipTerms(self.logit_scale * f @ self.classifier, f @ self.keys.T)

    def components(self, terms: TipTerms, beta: float) -> TipComponents:
        """exp(-beta * (1 - A)) @ L at one beta, L applied as a per-class sum (N M work,
        not 2 N M C: :class:`.kernels.cache.ValueProduct`)."""
        cache_logits = cache_term(terms.affinity, beta, self.value_product)
        return TipComponents(terms.clip_logits, cache_logits)

    def stacked_components(self, terms: TipTerms, betas: Sequence[float]) -> TipComponents:
        """:meth:`components` at several betas, stacked along the rows (beta-major: (B N,
        C)), without autograd; bit-identical rows (:func:`.kernels.cache.stacked_cache_terms`)."""
        cache_logits = stacked_cache_terms(terms.affinity, betas, self.value_product)
        return TipComponents(terms.clip_logits.repeat(len(betas), 1), cache_logits)

    @staticmethod
    def combine(
        c: TipComponents, alpha: torch.Tensor | float, lam: torch.Tensor | None = None
    ) -> torch.Tensor:
        """clip_logits + alpha * cache_logits; alpha may carry leading grid axes."""
        return c.clip_logits + alpha * c.cache_logits

    def forward(self, f: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
        """(N, d) normalised features -> (N, C) logits (Eq. 6)."""
        return self.combine(self.components(self.terms(f), beta), alpha)


@register_method
class TipAdapter(CacheMethod):
    """Training-free Tip-Adapter: cache from the few-shot set, (beta, alpha) searched on val."""

    name = "tip_adapter"

    @dataclass
    class Options:
        dataset: str | None = None  # picks the official search ranges (TIP_DEFAULTS)
        search: bool = True  # False: keep the initial (beta, alpha)
        beta_range: Range | None = None  # None: (0.1, beta_max, 200)
        alpha_range: Range | None = None  # None: (0.1, alpha_max, 20)
        init_beta: float | None = None  # None: the dataset's (s = 100 units)
        init_alpha: float | None = None
        beta_scale: float | None = None  # beta grid and init x this; None: s / 100
        alpha_scale: float = 1.0  # alpha grid and init x this

    setting = ("beta", "alpha")

    # -- shared by Tip-Adapter and Tip-Adapter-F ------------------------------------------
    def _inits(self, data: FeatureData) -> tuple[float, float]:
        o, d = self.options, tip_defaults(self.options.dataset)
        rb, ra = self._scales(data)
        beta = o.init_beta if o.init_beta is not None else d.init_beta
        alpha = o.init_alpha if o.init_alpha is not None else d.init_alpha
        return rb * beta, ra * alpha

    def grids(self, data: FeatureData) -> tuple[list[float], list[float]]:
        """The beta and alpha grids (official ranges, rescaled by the grid scales)."""
        o, d = self.options, tip_defaults(self.options.dataset)
        rb, ra = self._scales(data)
        beta_range = o.beta_range or (0.1, d.beta_max, 200)
        alpha_range = o.alpha_range or (0.1, d.alpha_max, 20)
        return linear_grid(*beta_range, scale=rb), linear_grid(*alpha_range, scale=ra)

    def _build(self, data: FeatureData, learnable_keys: bool) -> TipCache:
        device = data.device
        return TipCache(
            data.cache_keys.to(device),
            data.cache_values.to(device),
            data.classifiers["positive"].to(device),
            data.logit_scale,
            learnable_keys=learnable_keys,
        )

    def _search(self, data: FeatureData, result: FitResult) -> FitResult:
        beta, alpha = self._inits(data)
        rb, ra = self._scales(data)
        chosen = {"init_beta": beta, "init_alpha": alpha, "beta_scale": rb, "alpha_scale": ra}
        if self.options.search:
            found: SearchResult = self.search(data.val_features, data.val_labels, data)
            beta, alpha = found.beta, found.alpha
            chosen["search_val_acc"] = found.accuracy
        chosen.update(beta=beta, alpha=alpha)
        self.chosen = chosen
        result.chosen.update(chosen)
        return result

    # -- interface -------------------------------------------------------------------------
    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        self.module = self._build(data, learnable_keys=False)
        return self._search(data, FitResult())


@register_method
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys fine-tuned by gradient descent, then the search."""

    name = "tip_adapter_f"

    @dataclass
    class Options(TipAdapter.Options):
        epochs: int | None = None  # None: the dataset's (20; EuroSAT 100)
        lr: float = 1e-3
        eps: float = 1e-4
        weight_decay: float = 0.01
        batch_size: int = 256
        progress: bool = False

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o = self.options
        module = self.module = self._build(data, learnable_keys=True)
        beta, alpha = self._inits(data)
        optimizer = adamw(module.parameters(), lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
        result = fit_epochs(
            module,
            optimizer,
            data,
            epochs=o.epochs or tip_defaults(o.dataset).epochs,
            batch_size=o.batch_size,
            loss_fn=lambda f, y: F.cross_entropy(module(f.float(), beta, alpha), y),
            logits_fn=lambda f: module.chunked(f, beta, alpha),
            seed=seed,
            progress=o.progress,
            desc=self.name,
        )
        return self._search(data, result)

    def trainable_parameters(self) -> int:
        return 0 if self.module is None else self.module.keys.numel()
