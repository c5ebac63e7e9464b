"""APE-T: the trained variant of APE (Zhu et al., ICCV 2023; official code
yangyangyang127/APE, ``main.py: APE_T`` and ``utils.py: APE_Training``).

The channel criterion of :mod:`.ape` (with APE-T's weights (w_0, w_1) = (0.2, 0.8)) picks
Q channels I. A category residual R (C, Q), zeros at the start, is added on those channels
to both the text classifier and the cache keys of each class, and each cache entry gets a
learnable value weight v_i, ones at the start:

    W~[I, c]  = W[I, c] + R[c]              (d, C)  (other channels unchanged)
    F~_i[I]   = F_i[I] + R[y_i]             (M, d)
    L~        = L * v                       (M, C)
    logits    = s * f @ W~  +  alpha * exp(-beta (1 - f @ F~^T)) @ L~      (N, C)

on all d channels (W~ and F~ are not re-normalised, as in the official code). R and v train
with cross-entropy at the initial (beta, alpha): AdamW (the dataset's lr and eps, weight
decay 0.1), cosine per iteration, batch 256, the dataset's epoch count, one augmented view
per epoch; the best epoch on val is kept. Then (beta, alpha) are searched on val over the
official grids (200 x 20, first best in loop order, vectorised by
:func:`fewclip.methods.search.grid_search_chunked`).

Differences from the official code (options): as the released ``APE_Training`` calls the
criterion with APE's count (``training_free_feat_num``) but sizes R by
``training_feat_num`` (a shape error whenever they differ), R and I both use
``training_feat_num`` here; the criterion is the text-and-cache one APE computes (the
released code reloads APE's cached criterion file). fp32 where the official code trains
fp16 parameters. The rest as :mod:`.ape` (s for the 100 of the text logits, beta's grid x
s / 100, channel counts scaled to d).

R and v are per-class / per-entry tables: APE-T cannot classify unseen classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ape import APE, scaled_count, select_channels
from .base import FeatureData, FitResult, register_method
from .kernels.cache import chunked, row_chunks
from .search import grid_scales, grid_search_chunked, linear_grid
from .training import adamw, fit_epochs

TRAINING_WEIGHTS = (0.2, 0.8)  # w_training of every official config


class CategoryResidual(nn.Module):
    """The APE-T forward. keys (M, d), labels (M,), classifier W (d, C), channels I (Q,)."""

    def __init__(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        classifier: torch.Tensor,
        channels: torch.Tensor,
        logit_scale: float,
    ) -> None:
        super().__init__()
        self.register_buffer("keys", keys.detach().clone().float(), persistent=False)
        self.register_buffer("labels", labels.detach().clone(), persistent=False)
        self.register_buffer("text", classifier.detach().clone().float(), persistent=False)
        self.register_buffer("channels", channels.detach().clone(), persistent=False)
        num_classes = classifier.shape[1]
        self.residual = nn.Parameter(torch.zeros(num_classes, channels.numel()))
        self.value_weights = nn.Parameter(torch.ones(keys.shape[0], 1))
        self.logit_scale = float(logit_scale)

    def refined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F~ (M, d), W~ (d, C), L~ (M, C))."""
        keys = self.keys.index_add(1, self.channels, self.residual[self.labels])
        text = self.text.index_add(0, self.channels, self.residual.T)
        values = F.one_hot(self.labels, self.text.shape[1]).float() * self.value_weights
        return keys, text, values

    def components(self, f: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """f (N, d) -> (s f @ W~, exp(-beta (1 - f @ F~^T)) @ L~), both (N, C)."""
        keys, text, values = self.refined()
        cache = torch.exp(-beta * (1 - f @ keys.T)) @ values
        return self.logit_scale * f @ text, cache

    def forward(self, f: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
        clip_logits, cache = self.components(f, beta)
        return clip_logits + alpha * cache


@register_method
class APET(APE):
    """APE-T: category residual and cache value weights trained, then (beta, alpha) searched."""

    name = "ape_t"

    @dataclass
    class Options(APE.Options):
        training_feat_num: int | None = None  # channels with a residual; None: dataset's
        epochs: int | None = None  # None: the dataset's (train_epoch)
        lr: float | None = None  # None: the dataset's
        eps: float | None = None  # None: the dataset's
        weight_decay: float = 0.1
        batch_size: int = 256
        progress: bool = False

    module: CategoryResidual | None = None

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o, d = self.options, self.defaults()
        text, keys = self.text(data), data.cache_keys.float()
        count = o.training_feat_num or scaled_count(d.training_feat_num, data.dim)
        weights = o.weights if o.weights is not None else TRAINING_WEIGHTS
        channels = select_channels(text, keys, data.train_labels, weights, min(count, data.dim))
        module = CategoryResidual(keys, data.train_labels, text, channels, data.logit_scale)
        module = self.module = module.to(data.device)
        betas, alphas = self.grids_ba(data)
        rb, _ = grid_scales(data.logit_scale, o.beta_scale)
        beta0 = rb * (o.init_beta if o.init_beta is not None else d.init_beta)
        alpha0 = o.init_alpha if o.init_alpha is not None else d.init_alpha
        optimizer = adamw(
            module.parameters(),
            lr=o.lr if o.lr is not None else d.lr,
            eps=o.eps if o.eps is not None else d.eps,
            weight_decay=o.weight_decay,
        )
        result = fit_epochs(
            module,
            optimizer,
            data,
            epochs=o.epochs if o.epochs is not None else d.epochs,
            batch_size=o.batch_size,
            loss_fn=lambda f, y: F.cross_entropy(module(f.float(), beta0, alpha0), y),
            logits_fn=lambda f: module(f.float(), beta0, alpha0),
            seed=seed,
            progress=o.progress,
            desc=self.name,
        )
        beta, alpha = beta0, alpha0
        chosen = {"training_feat_num": int(channels.numel()), "init_beta": beta0}
        if o.search and data.val_labels.numel():
            with torch.no_grad():
                found = grid_search_chunked(
                    lambda f: f.float(),
                    module.components,
                    lambda c, a, lam=None: c[0] + a * c[1],
                    data.val_features,
                    data.val_labels,
                    betas,
                    alphas,
                    rows=row_chunks(keys.shape[0]),
                )
            beta, alpha = found.beta, found.alpha
            chosen["search_val_acc"] = found.accuracy
        self.beta, self.alpha = beta, alpha
        chosen.update(beta=beta, alpha=alpha)
        result.chosen.update(chosen)
        return result

    def grids_ba(self, data: FeatureData) -> tuple[list[float], list[float]]:
        """APE-T's (beta, alpha) grids: APE's first two."""
        o = self.options
        s1 = (o.search_scale or self.defaults().search_scale)[1]
        betas, _, _ = self.grids(data)
        return betas, linear_grid(0.1, s1, o.steps[1])

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, *, beta: float | None = None, alpha: float | None = None
    ) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError("ape_t: call fit() before logits()")
        beta = self.beta if beta is None else beta
        alpha = self.alpha if alpha is None else alpha
        module = self.module
        rows = row_chunks(module.keys.shape[0])
        return chunked(lambda f: module(f.float(), beta, alpha), features, rows)

    def trainable_parameters(self) -> int:
        if self.module is None:
            return 0
        return self.module.residual.numel() + self.module.value_weights.numel()
