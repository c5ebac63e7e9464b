"""DualAdapter: "Negative Yields Positive: Unified Dual-Path Adapter for Vision-Language
Models" (Zhang et al., arXiv 2403.12964).

A positive path says which class an image is, a negative path which classes it is not;
each has a textual and a visual (cache) part. Built once from the few-shot set
(M cache entries, C classes, y_i the class of entry i, K_c the shots of class c):

    F    (M, d)  cache keys (raw augmented-view features averaged, normalised once)
    L    (M, C)  one-hot values
    L~   (M, C)  soft labels, per class c with K_c > 1 (K_c = 1: L~ = L):
                 m_i = mean_{j != i, y_j = c} F_i . F_j,  w = softmax_{i: y_i = c}(m / 0.1),
                 L~_i = K_c * w_i * onehot(c)             (each class's rows sum to K_c)
    F-   (M, d)  pseudo-negative keys: entry i is the k-th shot of class c,
                 F-_i = norm(mean_{j != c} F_{j,k})       (slot k of every other class)
    W_t, W_d, W_n  (d, C)  positive-template, description (CuPL) and negative-template
                 classifiers ("positive", "description", "negative" in FeatureData)

Learnable residuals, all (C, d) and zero-initialised: R_t, R_d, R_k (positive), R_n, R_k-
(negative). R_k and R_k- are added to every key of their class. For a normalised image
feature f (N, d), with s the backbone's logit scale (CLIP's 100, the constant in the
paper and code):

    K+    = norm(F + R_k[y]),  K- = norm(F- + R_k-[y])                (M, d)
    W+    = 0.45 * norm(W_t + R_t^T) + 0.55 * norm(W_d + R_d^T)     (d, C), not re-normalised
    pos   = s * f @ W+                       + alpha * exp(-beta * (1 - f @ K+^T)) @ L~
    neg   = 0.15 * s * (1 - f @ norm(W_n + R_n^T)) + alpha * exp(-beta * (f @ K-^T)) @ L
    logit = lam * pos + (1 - lam) * neg                               (N, C)

One beta and one alpha serve both paths, as in the official code.

Loss: CE(logit, y) + ARL + 8 * consistency. Training: AdamW in two groups (positive
residuals lr 1e-4, negative 5x), weight decay 0.1, eps 1e-3, cosine per iteration, batch
256, one augmented view per epoch, per-dataset settings (:mod:`.dual_configs`); the best
epoch by val accuracy at the initial (beta, alpha, lam) is kept, then (beta, alpha, lam)
are searched on val, returning the official nested loop's choice. Beta's grid and initial
value (for s = 100) scale by ``beta_scale`` (default s / 100), alpha's by ``alpha_scale``
(default 1; :func:`.search.grid_scales`). Ablations are options; ``version=2`` is SimNL
(WACV 2025, zhangce01/SimNL: soft-label temperature 1, groups of the run's K).

Differences from the official code (zhangce01/DualAdapter), each deliberate: consistency
per class (``consistency="official"``: along the class axis); unbalanced sets handled per
class (slots, soft labels, F-), R_k, R_k- and F-'s slots by each entry's label, not its
position (under label noise the official blocks are the clean classes); F- over all other
classes (official: the C - 1 least similar, the same unless another class's mean key is
closer); float32 (official: half; ``benchmarks/bench_precision.py``); W_d = W_t without a
description classifier (noted); ``paths="negative"`` trains R_n, R_k- only, without ARL
and consistency; StanfordCars' and UCF101's stale configs read as beta [0, 15) in 100
steps, alpha [0, 10) / [0, 7) in 20, lam [0.6, 1.0) in 20.

``fast=True`` (default) sends the forward, the losses and the search to
:mod:`.kernels.dual` and :mod:`.kernels.search`; ``fast=False`` runs the formulas as written
here. Same values to float rounding, same search choice (``tests/test_dual_adapter.py::
test_fast_equals_plain``). Selection sees only ``data.val_*`` (which split: the run layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureData, FitResult, register_method
from .cache_method import CacheMethod, CacheModule, Range
from .dual_configs import (  # noqa: F401  (DUAL_DEFAULTS, DualDefaults: re-exported)
    DUAL_DEFAULTS,
    DUAL_GENERIC,
    DualDefaults,
    dual_defaults,
    initial_setting,
    search_grids,
)
from .kernels import dual as kernels
from .kernels.dual import DualComponents, DualTerms
from .training import adamw, fit_epochs

TEXT_WEIGHTS = (0.45, 0.55)  # W+ = 0.45 * template + 0.55 * description
NEGATIVE_TEXT_SCALE = 0.15  # the negative text logits use 0.15 * s (15 for CLIP)


#: What ``version`` changes (v1 DualAdapter, v2 SimNL): the soft labels' temperature (and
#: v2 groups the entries with the run's K, :func:`soft_labels`).
VERSIONS: dict[int, dict[str, float]] = {1: {"soft_temperature": 0.1}, 2: {"soft_temperature": 1.0}}

# -- inputs built once from the few-shot set ---------------------------------------------


def shot_slots(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M,) k for each entry: it is the k-th (from 0) entry of its class, in order."""
    onehot = F.one_hot(labels, num_classes)
    return (onehot.cumsum(0) - onehot).gather(1, labels[:, None])[:, 0]


def soft_labels(
    keys: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    temperature: float = 0.1,
    shots: int | None = None,
) -> torch.Tensor:
    """(M, C) similarity-based label refinement L~ (one-hot for classes with one shot).

    keys (M, d) normalised, labels (M,). The entries are grouped by their label c;
    m_i = (sum_{j != i, y_j = c} F_i . F_j) / (K - 1); w = softmax(m / temperature) within
    the group; L~_i = K * w_i * onehot(c).

    ``shots=None`` (v1, DualAdapter): K = K_c, the group's own size (the official reshape
    assumes K_c = K for every class). ``shots=K`` (v2, SimNL's ``generate_soft_label``): the
    run's K for every group, also where label noise makes a group larger or smaller;
    K = 1 keeps one-hot labels (SimNL's formula divides by K - 1 = 0 there).
    """
    counts = torch.bincount(labels, minlength=num_classes)[labels].to(keys.dtype)  # K_c (M,)
    if shots is not None:
        if shots <= 1:
            return F.one_hot(labels, num_classes).to(keys.dtype)
        counts = torch.full_like(counts, float(shots))
    shots = counts  # (M,) the K of each entry's group
    class_sums = torch.zeros(num_classes, keys.shape[1], dtype=keys.dtype, device=keys.device)
    class_sums.index_add_(0, labels, keys)
    # sum over the other keys j of the class of F_i . F_j = F_i . (sum of the class) - F_i . F_i
    sims = (keys * class_sums[labels]).sum(-1) - (keys * keys).sum(-1)
    m = torch.where(shots > 1, sims / (shots - 1).clamp(min=1), torch.zeros_like(sims))
    z = m / temperature
    z_max = torch.full((num_classes,), -torch.inf, dtype=z.dtype, device=z.device)
    z_max = z_max.scatter_reduce(0, labels, z, "amax")
    e = torch.exp(z - z_max[labels])
    w = e / torch.zeros_like(z_max).index_add(0, labels, e)[labels]
    return (shots * w)[:, None] * F.one_hot(labels, num_classes).to(keys.dtype)


def pseudo_negative_keys(
    keys: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(M, d) F-: entry i (the k-th shot of class c) gets norm(mean_{j != c} F_{j,k}).

    The mean runs over the other classes that have a k-th shot; none: a zero key.
    """
    slots = shot_slots(labels, num_classes)
    num_slots, dim = int(slots.max()) + 1, keys.shape[1]
    sums = keys.new_zeros(num_slots, num_classes, dim).index_put_(
        (slots, labels), keys, accumulate=True
    )
    counts = keys.new_zeros(num_slots, num_classes).index_put_(
        (slots, labels), torch.ones_like(labels, dtype=keys.dtype), accumulate=True
    )
    others = sums.sum(1)[slots] - sums[slots, labels]  # (M, d)
    n_others = counts.sum(1)[slots] - counts[slots, labels]  # (M,)
    return F.normalize(others / n_others.clamp(min=1)[:, None], dim=-1)


# -- losses, as written in the paper and code --------------------------------------------


def adaptive_reranking_loss(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, scale=4.0, k=3
) -> torch.Tensor:
    """ARL: mean over samples and their k nearest prototypes j of
    max(0, d(f, t_y) + (1 - t_y . t_j) / scale - d(f, t_j)), d Euclidean.

    features (B, d), prototypes (C, d) used as they are (W+ columns), labels (B,). As the
    official code: ``torch.cdist``, then the k smallest; d(f, t_y) computed directly.
    The fast path is :func:`.kernels.dual.reranking_loss`.
    """
    distances = torch.cdist(features, prototypes)  # (B, C)
    nearest_d, nearest = distances.topk(min(k, prototypes.shape[0]), dim=1, largest=False)
    t_y = prototypes[labels]  # (B, d)
    margins = (1.0 - (prototypes[nearest] * t_y[:, None]).sum(-1)) / scale  # (B, k)
    anchor = (features - t_y).norm(dim=-1, keepdim=True)  # (B, 1)
    return torch.clamp(anchor + margins - nearest_d, min=0).mean()


def _consistency_dim(mode: str) -> int:
    """The consistency cosines' axis: 0 per class ("class"), 1 along classes ("official")."""
    if mode not in ("class", "official"):
        raise ValueError(f"consistency must be 'class' or 'official', not {mode!r}")
    return 0 if mode == "class" else 1


def consistency_loss(
    w_plus: torch.Tensor,
    w_t: torch.Tensor,
    w_d: torch.Tensor,
    mode: str = "class",
    weights: tuple[float, float] = TEXT_WEIGHTS,
) -> torch.Tensor:
    """mean(0.45 * (1 - cos(W+, W_t)) + 0.55 * (1 - cos(W+, W_d))), all (d, C).

    mode "class": cosine per class column; "official": along the class axis per feature
    dimension, as the official code. Fast path: :func:`.kernels.dual.consistency_loss`.
    """
    dim = _consistency_dim(mode)
    cos_t = F.cosine_similarity(w_plus, w_t, dim=dim, eps=kernels.COSINE_EPS)
    cos_d = F.cosine_similarity(w_plus, w_d, dim=dim, eps=kernels.COSINE_EPS)
    return (weights[0] * (1 - cos_t) + weights[1] * (1 - cos_d)).mean()


class DualCache(CacheModule):
    """Frozen inputs (buffers), the five residuals and the forward, on the inputs' device;
    with ``fast``, :class:`.kernels.dual.DualKernels` derived from the frozen inputs once."""

    def __init__(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        w_t: torch.Tensor,
        w_d: torch.Tensor,
        w_n: torch.Tensor,
        logit_scale: float,
        *,
        soft: bool = True,
        negative_cache: bool = True,
        soft_temperature: float = 0.1,
        soft_shots: int | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        dim, num_classes = w_t.shape
        keys = keys.detach().clone().float()
        # (d, C) classifiers laid out class by class, as the (C, d) residuals are (W + R^T
        # and its normalisation over d then read memory in order)
        w_t, w_d, w_n = (t.detach().float().T.contiguous().T for t in (w_t, w_d, w_n))
        values = F.one_hot(labels, num_classes).float()
        soft_values = (
            soft_labels(keys, labels, num_classes, soft_temperature, soft_shots) if soft else values
        )
        negative_keys = pseudo_negative_keys(keys, labels, num_classes)
        # Inputs, not state (out of state_dict: best-epoch snapshots hold residuals only):
        # F (M, d), y (M,), L and L~ (M, C), F- (M, d), W_t, W_d, W_n (d, C)
        names = ("keys", "labels", "values", "soft_values", "negative_keys", "w_t", "w_d", "w_n")
        tensors = (keys, labels.clone(), values, soft_values, negative_keys, w_t, w_d, w_n)
        for name, tensor in zip(names, tensors, strict=True):
            self.register_buffer(name, tensor, persistent=False)
        self.logit_scale = float(logit_scale)
        self.negative_text_scale, self.text_weights = NEGATIVE_TEXT_SCALE, TEXT_WEIGHTS
        self.negative_cache = negative_cache
        self.fast = fast
        self.kernels = None
        if fast:
            slots = shot_slots(self.labels, num_classes)
            self.kernels = kernels.DualKernels(
                keys, negative_keys, self.labels, slots, values, soft_values, negative_cache
            )
        zeros = lambda: nn.Parameter(torch.zeros(num_classes, dim, device=keys.device))
        self.r_t, self.r_d, self.r_k = zeros(), zeros(), zeros()  # positive residuals
        self.r_n, self.r_kn = zeros(), zeros()  # negative residuals (R_n, R_k-)

    def positive_classifier(self) -> torch.Tensor:
        """W+ (d, C) = 0.45 norm(W_t + R_t^T) + 0.55 norm(W_d + R_d^T)."""
        w_t = F.normalize(self.w_t + self.r_t.T, dim=0)
        w_d = F.normalize(self.w_d + self.r_d.T, dim=0)
        return TEXT_WEIGHTS[0] * w_t + TEXT_WEIGHTS[1] * w_d

    def negative_classifier(self) -> torch.Tensor:
        """W- (d, C) = norm(W_n + R_n^T)."""
        return F.normalize(self.w_n + self.r_n.T, dim=0)

    def positive_keys(self) -> torch.Tensor:
        """K+ (M, d) = norm(F + R_k[y])."""
        return F.normalize(self.keys + self.r_k[self.labels], dim=-1)

    def negative_keys_adapted(self) -> torch.Tensor:
        """K- (M, d) = norm(F- + R_k-[y])."""
        return F.normalize(self.negative_keys + self.r_kn[self.labels], dim=-1)

    def forward(self, f: torch.Tensor, beta: float, alpha: float, lam: float) -> torch.Tensor:
        """(N, d) normalised features -> (N, C) unified logits, the module doc's equations."""
        if self.fast:
            return self.combine(self.components(self.terms(f), beta), alpha, lam)
        s = self.logit_scale
        K_pos, K_neg = self.positive_keys(), self.negative_keys_adapted()
        W_plus, W_neg = self.positive_classifier(), self.negative_classifier()
        pos = s * f @ W_plus + alpha * torch.exp(-beta * (1 - f @ K_pos.T)) @ self.soft_values
        neg = NEGATIVE_TEXT_SCALE * s * (1 - f @ W_neg)
        if self.negative_cache:
            neg = neg + alpha * torch.exp(-beta * (f @ K_neg.T)) @ self.values
        return lam * pos + (1 - lam) * neg

    # -- the forward in two stages, for the search (:mod:`.search`) -----------------------
    def terms(self, f: torch.Tensor) -> DualTerms:
        """The beta-free parts: s f @ W+, f @ K+^T, 0.15 s (1 - f @ W-), f @ K-^T."""
        if self.fast:
            return self.kernels.terms(self, f)
        s = self.logit_scale
        neg_affinity = f @ self.negative_keys_adapted().T if self.negative_cache else None
        return DualTerms(
            pos_text=s * f @ self.positive_classifier(),
            pos_affinity=f @ self.positive_keys().T,
            neg_text=NEGATIVE_TEXT_SCALE * s * (1 - f @ self.negative_classifier()),
            neg_affinity=neg_affinity,
        )

    def components(self, terms: DualTerms, beta: float) -> DualComponents:
        """The cache terms at one beta: exp(-beta (1 - f @ K+^T)) @ L~, exp(-beta f @ K-^T) @ L."""
        if self.fast:
            return self.kernels.components(terms, beta)
        pos_cache = torch.exp(-beta * (1 - terms.pos_affinity)) @ self.soft_values
        neg_cache = torch.zeros_like(pos_cache)
        if terms.neg_affinity is not None:
            neg_cache = torch.exp(-beta * terms.neg_affinity) @ self.values
        return DualComponents(terms.pos_text, pos_cache, terms.neg_text, neg_cache)

    def stacked_components(self, terms: DualTerms, betas) -> DualComponents:
        """:meth:`components` at several betas stacked along the rows (fast path)."""
        return self.kernels.stacked_components(terms, betas)

    @staticmethod
    def combine(
        c: DualComponents, alpha: torch.Tensor | float, lam: torch.Tensor | float
    ) -> torch.Tensor:
        """lam * pos + (1 - lam) * neg; alpha and lam may carry leading grid axes."""
        pos = c.pos_text + alpha * c.pos_cache
        neg = c.neg_text + alpha * c.neg_cache
        return lam * pos + (1 - lam) * neg


@register_method
class DualAdapter(CacheMethod):
    """DualAdapter: positive and negative paths, each textual + cache; see the module doc."""

    name = "dual_adapter"

    @dataclass
    class Options:
        dataset: str | None = None  # picks the official settings (DUAL_DEFAULTS)
        epochs: int | None = None  # None: the dataset's (30 for datasets without a config)
        lr: float | None = None  # positive residuals; None: the dataset's (1e-4)
        negative_lr_factor: float = 5.0  # negative residuals train at 5x lr
        weight_decay: float = 0.1
        eps: float | None = None  # None: the dataset's (1e-3)
        batch_size: int = 256
        train: bool = True  # False: training-free (residuals stay zero)
        paths: str = "both"  # "positive" (lam = 1) or "negative" (lam = 0)
        version: int = 1  # 1: DualAdapter; 2: SimNL (soft-label temperature 1, K per group)
        soft_labels: bool = True  # False: one-hot L in the positive cache
        soft_temperature: float | None = None  # None: the version's (v1 0.1, v2 1.0)
        negative_cache: bool = True  # False: the negative path is its text part only
        search: bool = True  # False: keep the initial (beta, alpha, lam)
        search_lam: bool = True  # False: lam fixed at init_lam
        init_beta: float | None = None  # None: the dataset's (s = 100 units)
        init_alpha: float | None = None
        init_lam: float | None = None
        beta_range: Range | None = None  # (start, stop, steps); None: the dataset's
        alpha_range: Range | None = None
        lam_range: Range | None = None
        beta_scale: float | None = None  # beta grid and init x this; None: s / 100
        alpha_scale: float = 1.0  # alpha grid and init x this
        consistency: str = "class"  # or "official" (cosine along the class axis)
        consistency_weight: float = 8.0
        arl_weight: float = 1.0
        arl_scale: float = 4.0
        arl_k: int = 3
        fast: bool = True  # False: the plain formulas (forward, losses, exhaustive search)
        progress: bool = False

    setting = ("beta", "alpha", "lam")
    _trainable: int = 0

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.paths not in ("both", "positive", "negative"):
            raise ValueError("paths must be 'both', 'positive' or 'negative'")
        _consistency_dim(self.options.consistency)  # refuses an unknown mode, naming it
        if self.options.version not in VERSIONS:
            raise ValueError(f"dual_adapter: version must be one of {sorted(VERSIONS)}")

    def soft_label_settings(self, data: FeatureData) -> tuple[float, int | None]:
        """The soft labels' (temperature, K of every group; None: each group's size)."""
        o, shots = self.options, None
        temperature = o.soft_temperature
        if temperature is None:
            temperature = VERSIONS[o.version]["soft_temperature"]
        if o.version == 2:
            shots = data.shots or round(data.train_labels.shape[0] / data.num_classes)
        return temperature, shots

    def initial(self, data: FeatureData) -> tuple[float, float, float]:
        """(beta, alpha, lam) used while training; beta and alpha rescaled."""
        return initial_setting(self.options, *self._scales(data))

    def grids(self, data: FeatureData) -> tuple[list[float], list[float], list[float]]:
        """The beta, alpha and lam grids of the search (lam: one value when fixed)."""
        return search_grids(self.options, *self._scales(data))

    def _classifiers(self, data: FeatureData, notes: list[str]):
        w_t = data.classifiers["positive"]
        w_d = data.classifiers.get("description")
        if w_d is None:
            notes.append("dual_adapter: no description classifier, W_d = W_t")
            w_d = w_t
        w_n = data.classifiers.get("negative")
        if w_n is None:
            if self.options.paths != "positive":
                raise ValueError(
                    "dual_adapter needs the 'negative' classifier (negative templates) for its "
                    "negative path; give the dataset negative templates or use paths='positive'"
                )
            w_n = w_t  # never used with lam = 1
        return w_t, w_d, w_n

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o, d = self.options, dual_defaults(self.options.dataset)
        notes: list[str] = []
        w_t, w_d, w_n = self._classifiers(data, notes)
        temperature, soft_shots = self.soft_label_settings(data)
        inputs = (data.cache_keys, data.train_labels, w_t, w_d, w_n)
        module = self.module = DualCache(
            *(t.to(data.device) for t in inputs),
            data.logit_scale,
            soft=o.soft_labels,
            negative_cache=o.negative_cache,
            soft_temperature=temperature,
            soft_shots=soft_shots,
            fast=o.fast,
        )
        beta, alpha, lam = self.initial(data)
        result = FitResult(notes=notes)
        self._trainable = 0
        if o.train:  # the residuals, the best epoch by val accuracy at the initial setting
            validate = lambda f: module.chunked(f, beta, alpha, lam)
            if module.fast:  # f_val @ F^T once per fit (val features and keys are frozen)
                validate = kernels.FrozenValidation(module, data.val_features, (beta, alpha, lam))
            result = fit_epochs(
                module,
                self.optimizer(module, data),
                data,
                epochs=o.epochs or d.epochs,
                batch_size=o.batch_size,
                loss_fn=self.training_loss(module, beta, alpha, lam),
                logits_fn=validate,
                seed=seed,
                progress=o.progress,
                desc=self.name,
            )
            result.notes[:0] = notes
        rb, ra = self._scales(data)
        chosen = dict(version=o.version, soft_temperature=temperature, init_beta=beta)
        chosen.update(init_alpha=alpha, init_lam=lam, beta_scale=rb, alpha_scale=ra)
        chosen["epochs"] = (o.epochs or d.epochs) if o.train else 0
        if o.search:
            found = self.search(data.val_features, data.val_labels, data)
            beta, alpha, lam = found.beta, found.alpha, found.lam
            chosen["search_val_acc"] = found.accuracy
        chosen.update(beta=beta, alpha=alpha, lam=lam)
        self.chosen = chosen
        result.chosen.update(chosen)
        return result

    def optimizer(self, module: DualCache, data: FeatureData) -> torch.optim.AdamW:
        """AdamW over the residuals that train, in two groups (negative at
        ``negative_lr_factor`` x lr); counts them for :meth:`trainable_parameters`."""
        o, d = self.options, dual_defaults(self.options.dataset)
        shots = int(torch.bincount(data.train_labels).max())
        eps = o.eps or (d.eps_low_shot if d.eps_low_shot and shots <= 2 else d.eps)
        lr = o.lr or d.lr
        groups = []
        if o.paths != "negative":
            groups.append({"params": [module.r_t, module.r_d, module.r_k], "lr": lr})
        if o.paths != "positive":
            negative = [module.r_n, module.r_kn] if module.negative_cache else [module.r_n]
            groups.append({"params": negative, "lr": lr * o.negative_lr_factor})
        self._trainable = sum(p.numel() for g in groups for p in g["params"])
        return adamw(groups, weight_decay=o.weight_decay, eps=eps)

    def training_loss(
        self, module: DualCache, beta: float, alpha: float, lam: float
    ) -> Callable[..., torch.Tensor]:
        """The loss of one training step, ``loss(f (B, d), [f_keys (B, M),] y (B,)) ->
        scalar``: CE of the unified logits at (beta, alpha, lam), plus ARL and the weighted
        consistency unless ``paths="negative"``. ``f_keys``: f @ F^T (fast path)."""
        o = self.options
        dim = _consistency_dim(o.consistency)
        if not module.fast:

            def plain_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                f = f.float()
                loss = F.cross_entropy(module(f, beta, alpha, lam), y)
                if o.paths == "negative":
                    return loss
                W_plus = module.positive_classifier()
                arl = adaptive_reranking_loss(f, W_plus.T, y, scale=o.arl_scale, k=o.arl_k)
                consistency = consistency_loss(W_plus, module.w_t, module.w_d, mode=o.consistency)
                return loss + o.arl_weight * arl + o.consistency_weight * consistency

            return plain_loss
        target = kernels.consistency_target(module.w_t, module.w_d, dim, TEXT_WEIGHTS)
        weights = (o.arl_weight, o.consistency_weight) if o.paths != "negative" else None
        return lambda f, y: module.kernels.loss(
            module, f, y, (beta, alpha, lam), weights, (o.arl_scale, o.arl_k), target, dim
        )

    def trainable_parameters(self) -> int:
        """Residual entries that train: 5 C d for the full method, 0 training-free."""
        return self._trainable
