"""APE: Adaptive Prior rEfinement, training-free (Zhu et al., ICCV 2023, "Not All Features
Matter: Enhancing Few-shot CLIP with Adaptive Prior Refinement"; official code
yangyangyang127/APE, ``main.py`` / ``utils.py``).

Channel selection. The text columns t_c = W[:, c] and the cache keys of class c form
class c's set X_c = {t_c} + {F_i : y_i = c} (n_c = K_c + 1 rows); per channel k,

    sim_k  = sum_{i != j} sum_{u in X_i, v in X_j} u_k v_k  /  sum_{i != j} n_i n_j
           = ((sum_c S_c)^2 - sum_c S_c^2)_k / ((sum_c n_c)^2 - sum_c n_c^2),
             S_c = sum_{u in X_c} u                     (the inter-class similarity)
    var_k  = var_c(W[k, c])                             (unbiased, over the C classes)
    J_k    = -w_0 sim_k + w_1 var_k                     criterion, (d,)

and the Q channels with the largest J are kept (index set I, Q = ``feat_num``); W', F',
f' are W, F, f restricted to I and re-normalised.

Cache with refined affinities:

    R_fW   = s * f @ W                                   (N, C) zero-shot logits, all d
    R_fF'  = f' @ F'^T                                   (N, M)
    p_i    = softmax(F'_i @ W')                           (C,) (unscaled cosines)
    D_i    = sum_c L_ic log2((L_ic + 1e-6) / (p_ic + 1e-6))  (M,) KL(L_i || p_i) in bits
    L'     = L * exp(gamma * D)                          (M, C) refined values
    logits = R_fW + alpha * exp(-beta (1 - R_fF')) @ L'  (N, C)

(beta, alpha, gamma) are searched on val over the official grids (beta in [0.1, s0) in
200 steps, alpha in [0.1, s1) in 20, gamma in [0, s2) in 20, (s0, s1, s2) the dataset's
``search_scale``); the first best in loop order (beta, then alpha, then gamma) wins, as in
the official triple loop. Vectorised here: per beta, all gammas' cache logits in one
product and all alphas counted at once (:func:`fewclip.methods.search.count_correct`),
integer counts, so the official choice.

Differences from the official code (options): Q is the dataset's count for RN50's 1,024
channels, scaled to the backbone's d (``feat_num`` sets it); the text logits use the
backbone's scale s where the code writes 100, and beta's grid is multiplied by s / 100 as
Tip-Adapter's is here (both 1 for CLIP); the official classifier ensembles CuPL sentences
with the templates (``classifier="description"`` uses the cached CuPL classifier where the
dataset has one); the official cache assumes K keys per class in class order, ours takes
any labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import FeatureData, FeatureMethod, FitResult, register_method
from .kernels.cache import ClassBlocks, chunked, row_chunks
from .search import count_correct, grid_scales, linear_grid

REFERENCE_DIM = 1024  # RN50's d: the unit of the official channel counts
#: Most (betas x gammas x rows x max(M, C)) one search step holds (2^22 floats = 16 MB).
STACK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class APEDefaults:
    """One row of the official configs (``configs/<dataset>.yaml``, RN50)."""

    search_scale: tuple[float, float, float]
    init_alpha: float
    feat_num: int  # training_free_feat_num
    weights: tuple[float, float]  # w_training_free
    training_feat_num: int
    lr: float
    eps: float
    epochs: int
    init_beta: float = 1.0
    init_gamma: float = 0.1


APE_DEFAULTS: dict[str, APEDefaults] = {
    "caltech101": APEDefaults((7, 7, 1), 1, 800, (0.5, 0.5), 900, 1e-3, 1e-3, 30),
    "dtd": APEDefaults((7, 7, 1), 3, 400, (0.5, 0.5), 700, 1e-3, 1e-3, 20),
    "eurosat": APEDefaults((30, 5, 1.5), 1, 700, (0.9, 0.1), 900, 1e-3, 1e-3, 200),
    "fgvc_aircraft": APEDefaults((20, 10, 1), 5, 800, (0.1, 0.9), 900, 1e-3, 1e-3, 30),
    "food101": APEDefaults((7, 7, 1), 0.8, 700, (0.3, 0.7), 900, 1e-4, 1e-3, 30),
    "imagenet": APEDefaults((7, 7, 0.5), 2, 500, (0.7, 0.3), 500, 1e-4, 1e-3, 20),
    "oxford_flowers": APEDefaults((7, 7, 1), 3, 700, (0.4, 0.6), 800, 1e-3, 1e-3, 60),
    "oxford_pets": APEDefaults((7, 7, 1), 2, 800, (0.7, 0.3), 800, 1e-4, 2e-3, 30),
    "stanford_cars": APEDefaults((10, 7, 1), 1, 500, (0.6, 0.4), 800, 1e-3, 5e-3, 30),
    "sun397": APEDefaults((10, 7, 1), 1, 800, (0.7, 0.3), 800, 1e-4, 1e-3, 30),
    "ucf101": APEDefaults((10, 7, 1.5), 2, 700, (0.3, 0.7), 800, 1e-3, 2e-3, 30),
}
#: Datasets without an official config (e.g. the offline tasks): Caltech101's row.
APE_GENERIC = APE_DEFAULTS["caltech101"]


def ape_defaults(dataset: str | None) -> APEDefaults:
    return APE_DEFAULTS.get(dataset or "", APE_GENERIC)


def scaled_count(count: int, dim: int) -> int:
    """An official channel count (of RN50's 1,024) scaled to d channels, in [1, d]."""
    return max(1, min(dim, round(count * dim / REFERENCE_DIM)))


def inter_class_similarity(
    text: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """sim (d,): the mean over pairs (u, v) from different classes of u * v (per channel),
    each class's set being its text column and its cache keys (the official quadruple loop
    of ``cal_criterion``, in closed form). text (d, C), keys (M, d), labels (M,)."""
    num_classes = text.shape[1]
    sums = text.T.clone().index_add_(0, labels, keys)  # (C, d) S_c
    counts = torch.bincount(labels, minlength=num_classes).to(text) + 1  # (C,) n_c
    pairs = counts.sum() ** 2 - (counts**2).sum()
    return (sums.sum(0) ** 2 - (sums**2).sum(0)) / pairs


def channel_criterion(
    text: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, weights: tuple[float, float]
) -> torch.Tensor:
    """J (d,) = -w_0 sim + w_1 var_c(W): large for channels that separate the classes."""
    sim = inter_class_similarity(text, keys, labels)
    return -weights[0] * sim + weights[1] * torch.var(text, dim=1)


def select_channels(
    text: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    weights: tuple[float, float],
    count: int,
) -> torch.Tensor:
    """The ``count`` channel indices with the largest criterion, (count,) (``torch.topk``,
    in descending order of J, as the official code)."""
    return torch.topk(channel_criterion(text, keys, labels, weights), k=count).indices


def key_divergence(keys: torch.Tensor, text: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """D (M,) = sum_c L log2((L + 1e-6) / (softmax(F' W') + 1e-6)): each key's KL divergence
    (bits) from its label to the zero-shot prediction of the key itself (unscaled cosines)."""
    p = (keys @ text).softmax(1)
    return (values * torch.log2((values + 1e-6) / (p + 1e-6))).sum(1)


def key_divergence_one_hot(
    keys: torch.Tensor, text: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """:func:`key_divergence` for one-hot values L = onehot(y): the one nonzero term,
    D_i = log2((1 + 1e-6) / (p_{i, y_i} + 1e-6)), computed on M entries instead of M C.

    Bit-identical to the plain formula: the other terms are exact zeros (0 times a finite
    log), and adding zeros to one term leaves it unchanged
    (``tests/test_feature_peers.py::test_ape_divergence_one_hot_equals_the_plain_formula``).
    """
    p = (keys @ text).softmax(1).gather(1, labels[:, None])[:, 0]  # (M,) p_{i, y_i}
    return torch.log2((torch.ones_like(p) + 1e-6) / (p + 1e-6))


def _add_alpha(comp: tuple[torch.Tensor, ...], alpha, lam=None) -> torch.Tensor:
    """R_fW + alpha * cache (alpha may carry leading grid axes)."""
    return comp[0] + alpha * comp[1]


@register_method
class APE(FeatureMethod):
    """Training-free APE: selected channels, refined cache values, searched blend."""

    name = "ape"

    @dataclass
    class Options:
        dataset: str | None = None  # picks the official row (APE_DEFAULTS)
        feat_num: int | None = None  # channels kept; None: the dataset's, scaled to d
        weights: tuple[float, float] | None = None  # (w_0, w_1); None: the dataset's
        search: bool = True  # False: keep the initial (beta, alpha, gamma)
        steps: tuple[int, int, int] = (200, 20, 20)  # grid steps of beta, alpha, gamma
        search_scale: tuple[float, float, float] | None = None  # None: the dataset's
        init_beta: float | None = None  # None: the dataset's
        init_alpha: float | None = None
        init_gamma: float | None = None
        beta_scale: float | None = None  # beta grid and init x this; None: s / 100
        classifier: str = "positive"  # the text classifier ("description": CuPL, if any)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if o.feat_num is not None and o.feat_num < 1:
            raise ValueError(f"{self.name}: feat_num must be >= 1, got {o.feat_num}")
        if min(o.steps) < 1:
            raise ValueError(f"{self.name}: steps must all be >= 1, got {o.steps}")

    def defaults(self) -> APEDefaults:
        return ape_defaults(self.options.dataset)

    def text(self, data: FeatureData) -> torch.Tensor:
        name = self.options.classifier
        if name not in data.classifiers:
            raise ValueError(
                f"{self.name}: no {name!r} classifier; available: {sorted(data.classifiers)}"
            )
        return data.classifiers[name].float()

    def channels(self, data: FeatureData, text: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        o, d = self.options, self.defaults()
        count = o.feat_num if o.feat_num is not None else scaled_count(d.feat_num, data.dim)
        weights = o.weights if o.weights is not None else d.weights
        return select_channels(text, keys, data.train_labels, weights, min(count, data.dim))

    def grids(self, data: FeatureData) -> tuple[list[float], list[float], list[float]]:
        o = self.options
        s0, s1, s2 = o.search_scale or self.defaults().search_scale
        rb, _ = grid_scales(data.logit_scale, o.beta_scale)
        gammas = [i * s2 / o.steps[2] for i in range(o.steps[2])]
        return linear_grid(0.1, s0, o.steps[0], rb), linear_grid(0.1, s1, o.steps[1]), gammas

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o, d = self.options, self.defaults()
        text, keys = self.text(data), data.cache_keys.float()
        self.indices = self.channels(data, text, keys)
        self.text_full = text
        self.text_sel = F.normalize(text[self.indices], dim=0)  # W' (Q, C)
        self.keys_sel = F.normalize(keys[:, self.indices], dim=-1)  # F' (M, Q)
        # L = onehot(y) (data.cache_values): D from each key's own class (M,)
        self.divergence = key_divergence_one_hot(self.keys_sel, self.text_sel, data.train_labels)
        self.blocks = ClassBlocks(data.train_labels, data.num_classes)
        self.scale = float(data.logit_scale)
        rb, _ = grid_scales(data.logit_scale, o.beta_scale)
        beta = rb * (o.init_beta if o.init_beta is not None else d.init_beta)
        alpha = o.init_alpha if o.init_alpha is not None else d.init_alpha
        gamma = o.init_gamma if o.init_gamma is not None else d.init_gamma
        chosen = {"feat_num": int(self.indices.numel()), "beta_scale": rb}
        result = FitResult()
        if o.search:
            (beta, alpha, gamma), correct = self.search(data)
            total = max(1, data.val_labels.numel())
            result.best_val_acc = chosen["search_val_acc"] = 100.0 * correct / total
        self.beta, self.alpha, self.gamma = beta, alpha, gamma
        chosen.update(beta=beta, alpha=alpha, gamma=gamma)
        result.chosen = chosen
        return result

    def _terms(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (n, d) -> R_fW (n, C) and R_fF' (n, M)."""
        f = f.float()
        f_sel = F.normalize(f[:, self.indices], dim=-1)
        return self.scale * f @ self.text_full, f_sel @ self.keys_sel.T

    def _cache(self, affinity: torch.Tensor, betas, gammas: torch.Tensor) -> torch.Tensor:
        """(n, M) affinity -> (B G n, C) cache logits exp(-beta (1 - A)) @ L' for every
        (beta, gamma), beta-major then gamma."""
        betas = torch.as_tensor(list(betas), dtype=affinity.dtype, device=affinity.device)
        e = torch.rsub(affinity, 1)[None].mul(betas.neg()[:, None, None]).exp_()  # (B, n, M)
        weight = torch.exp(gammas[:, None] * self.divergence[None])  # (G, M) = L' / L rows
        blocks = self.blocks
        if blocks.block_class is None:  # any label order: weight, then sum per class
            weighted = e[:, None] * weight[None, :, None, :]  # (B, G, n, M)
            return blocks.sum(weighted.reshape(-1, affinity.shape[1]))
        # K entries per class block: per block a (B n, K) @ (K, G) product
        (b, n, m), c = e.shape, blocks.num_classes
        per_block = torch.einsum(
            "xck,gck->gxc", e.view(b * n, c, m // c), weight.view(-1, c, m // c)
        )  # (G, B n, C) in block order
        sums = blocks.in_class_order(per_block, 2).view(-1, b, n, c).transpose(0, 1)
        return sums.reshape(-1, c)  # beta-major, then gamma

    @torch.no_grad()
    def search(self, data: FeatureData) -> tuple[tuple[float, float, float], int]:
        """The official triple loop's choice: ((beta, alpha, gamma), correct count).
        Several betas per :func:`count_correct` call (one group per (beta, gamma))."""
        betas, alphas, gammas = self.grids(data)
        f, y = data.val_features, data.val_labels
        gamma_t = torch.tensor(gammas, dtype=torch.float32, device=f.device)
        alpha_t = torch.tensor(alphas, dtype=torch.float32, device=f.device)
        num_g, m, c = len(gammas), self.keys_sel.shape[0], self.text_full.shape[1]
        counts = torch.zeros(len(betas), num_g, len(alphas), dtype=torch.long)
        rows = row_chunks(m * num_g)
        for start in range(0, f.shape[0], rows):
            clip_logits, affinity = self._terms(f[start : start + rows])
            labels = y[start : start + rows]
            n = labels.numel()
            per_call = max(1, min(len(betas), STACK_ELEMENTS // max(1, num_g * n * max(m, c))))
            for b0 in range(0, len(betas), per_call):
                batch = betas[b0 : b0 + per_call]
                groups = len(batch) * num_g
                comp = (clip_logits.repeat(groups, 1), self._cache(affinity, batch, gamma_t))
                found = count_correct(
                    comp,
                    _add_alpha,
                    labels.repeat(groups),
                    alpha_t,
                    None,
                    groups=torch.arange(groups, device=f.device).repeat_interleave(n),
                    num_groups=groups,
                )  # (B G, A, 1)
                counts[b0 : b0 + len(batch)] += found[..., 0].view(len(batch), num_g, -1).cpu()
        flat = counts.permute(0, 2, 1).flatten()  # loop order: beta, alpha, gamma
        best = int(flat.argmax())  # torch returns the first maximal index
        b, rest = divmod(best, len(alphas) * num_g)
        a, g = divmod(rest, num_g)
        return (betas[b], alphas[a], gammas[g]), int(flat[best])

    @torch.no_grad()
    def logits(
        self,
        features: torch.Tensor,
        *,
        beta: float | None = None,
        alpha: float | None = None,
        gamma: float | None = None,
    ) -> torch.Tensor:
        """(B, d) -> (B, C) at the chosen (beta, alpha, gamma), or at the values given."""
        if not hasattr(self, "indices"):
            raise RuntimeError(f"{self.name}: call fit() before logits()")
        beta = self.beta if beta is None else beta
        alpha = self.alpha if alpha is None else alpha
        gamma_t = torch.tensor([self.gamma if gamma is None else gamma], device=features.device)

        def forward(f: torch.Tensor) -> torch.Tensor:
            clip_logits, affinity = self._terms(f)
            return clip_logits + alpha * self._cache(affinity, [beta], gamma_t)

        return chunked(forward, features, row_chunks(self.keys_sel.shape[0]))
