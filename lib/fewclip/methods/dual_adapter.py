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

Loss: CE(logit, y) + ARL + 8 * consistency (:func:`adaptive_reranking_loss`,
:func:`consistency_loss`). Training: AdamW in two groups (positive residuals lr 1e-4,
negative 5x), weight decay 0.1, eps 1e-3, cosine per iteration, batch 256, one augmented
view per epoch, epochs and overrides per dataset (:data:`DUAL_DEFAULTS`: e.g. DTD 20 and
FGVCAircraft lr 5e-4 as their configs say, Food101 eps 1e-2 at 1-2 shots); the best epoch
by val accuracy at the initial (beta, alpha, lam) is kept. Then (beta, alpha, lam) are
searched on val (beta [0, s0) 200 steps, alpha [0, s1) 40 steps, lam [0.6, 1.0) 20 steps,
per-dataset ranges from the official configs) with the vectorised
:func:`.search.grid_search`, which returns the official nested loop's choice. The beta
and alpha grids and initial values are for s = 100: beta's are multiplied by
``beta_scale`` (default s / 100), alpha's by ``alpha_scale`` (default 1); see
:func:`.search.grid_scales`.

Ablations by options alone: ``paths="positive"`` (lam = 1) or ``"negative"`` (lam = 0),
``soft_labels=False`` (L~ = L), ``negative_cache=False`` (negative path = negative text
only), ``train=False`` (training-free: residuals stay zero), ``search_lam=False`` (lam
fixed at ``init_lam``); ``logits(x, lam=...)`` sweeps lam after fitting.

Versions (option ``version``): 1 (default) is DualAdapter as above; 2 is SimNL
("Enhancing Vision-Language Few-Shot Adaptation with Negative Learning", WACV 2025, the
same arXiv id's v2, zhangce01/SimNL), whose code differs from DualAdapter's only in the soft
labels: temperature 1 instead of 0.1 (L~ nearly uniform within a class, so close to L), and
entries grouped by their label with the run's K as divisor and multiplier
(:func:`soft_labels` with ``shots=K``), which differs from v1 only when label noise makes
the classes' counts unequal. SimNL's noisy-label experiment is ``RunConfig.label_noise``
(usable with either version and every method).

Differences from the official code (zhangce01/DualAdapter), each deliberate:
- consistency is the cosine per class (``consistency="official"``: along the class axis
  for each feature dimension, as the official ``CosineSimilarity(dim=1)`` on (d, C));
- the few-shot set may be unbalanced (CoOp keeps all items of a class with fewer than K);
  shot slots, soft labels and F- are defined per class, and F-_i averages over the other
  classes that have a k-th shot (the official reshape assumes exactly K per class);
- R_k, R_k- and the shot slots of F- are indexed by each entry's label; the official code
  indexes them by position (blocks of K entries, the order of sampling). Both agree on a
  clean sample; under label noise (SimNL's ImageNet-N) the official blocks are the *clean*
  classes, information a noisy-label learner should not have, so we use the given labels;
- F- averages over all other classes; the official code takes the C - 1 classes least
  similar to c (by mean key), which is the same unless another class's mean key is more
  similar to c's than c's own;
- float32 throughout (the official code casts keys, classifiers and residuals to half, so
  AdamW's moments are fp16 too; ``benchmarks/bench_precision.py`` measures the effect of
  that for Tip-Adapter-F's keys);
- a missing description classifier falls back to W_t with a note in the run record;
- with ``paths="negative"`` only R_n and R_k- train and ARL / consistency (which concern
  W+) are left out; ``trainable_parameters`` counts only the residuals that train
  (5 C d for the full method);
- the text weights are the code's 0.45 / 0.55 (the configs' ``w_training`` and
  ``w_training_free`` are read by no released code; there is no training-free script, so
  ``train=False`` is the spec's "all residuals zero");
- the stale official configs of StanfordCars and UCF101 (no ``search_scale2``; the
  official code would stop with a KeyError) are read as beta [0, 15) in 100 steps and
  alpha [0, 10) / [0, 7) in 20 steps, lam the default [0.6, 1.0) in 20 steps.

Selection sees only ``data.val_*``. The run layer decides what that is: the official code
uses ImageNet's val (= its test set) for both, which a run-layer switch can reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureData, FeatureMethod, FitResult, register_method
from .cache_ops import (
    BufferDerived,
    ClassBlocks,
    KeptProduct,
    ResidualKeys,
    TensorMemo,
    ValueProducts,
    cache_term,
    chunked,
    row_chunks,
    stacked_cache_terms,
)
from .search import SearchResult, grid_scales, grid_search_chunked, linear_grid
from .training import adamw, fit_epochs

Range = tuple[float, float, int]  # (start, stop, steps), stop excluded

TEXT_WEIGHTS = (0.45, 0.55)  # W+ = 0.45 * template + 0.55 * description
COSINE_EPS = 1e-7  # the consistency cosines' norm floor
NEGATIVE_TEXT_SCALE = 0.15  # the negative text logits use 0.15 * s (15 for CLIP)
#: ARL's margins t_y . t_j from one (B, d) x (d, C) product up to this many classes, else
#: from the k nearest prototypes gathered (B k d work instead of B C d)
DENSE_MARGIN_CLASSES = 64
LOGITS_CHUNK: int | None = None  # images per forward at evaluation; None: row_chunks(M)
#: Up to this many classes f's products with the narrow matrices of a forward (W+, R_k,
#: R_k-, the negative classifier and F-'s slot sums) are one product with their stack
#: (:func:`stacked_products`); above, one product each
STACKED_PRODUCT_CLASSES = 64


@dataclass(frozen=True)
class DualDefaults:
    """One dataset's official settings (configs/<dataset>.yaml), beta/alpha for s = 100."""

    epochs: int
    beta: Range
    alpha: Range
    init_beta: float
    init_alpha: float
    lam: Range = (0.6, 1.0, 20)
    init_lam: float = 0.75
    lr: float = 1e-4
    eps: float = 1e-3
    eps_low_shot: float | None = None  # eps for 1 and 2 shots, where the config says so


#: What ``version`` changes: v1 = DualAdapter (arXiv 2403.12964 v1, zhangce01/DualAdapter),
#: v2 = SimNL (WACV 2025, the paper's v2, zhangce01/SimNL): the same model, training and
#: search; only the soft labels differ (temperature 1 instead of 0.1, and SimNL's
#: ``generate_soft_label`` groups the entries by label with the run's K, see
#: :func:`soft_labels`).
VERSIONS: dict[int, dict[str, float]] = {1: {"soft_temperature": 0.1}, 2: {"soft_temperature": 1.0}}

DUAL_DEFAULTS: dict[str, DualDefaults] = {
    "imagenet": DualDefaults(20, (0, 4, 200), (0, 4, 40), 2, 1.2, lam=(0.6, 0.9, 20)),
    "caltech101": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 5),
    "dtd": DualDefaults(20, (0, 7, 200), (0, 7, 40), 1, 3),
    "eurosat": DualDefaults(200, (0, 20, 200), (0, 5, 20), 6, 1.5, lam=(0.3, 0.9, 10)),
    "fgvc_aircraft": DualDefaults(30, (0, 20, 200), (0, 10, 40), 3, 8, lr=5e-4),
    "food101": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 0.8, eps_low_shot=1e-2),
    "oxford_flowers": DualDefaults(60, (0, 7, 200), (0, 7, 40), 1, 3),
    "oxford_pets": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 2),
    "stanford_cars": DualDefaults(30, (0, 15, 100), (0, 10, 20), 2, 1, eps=5e-3),
    "sun397": DualDefaults(30, (0, 10, 200), (0, 7, 40), 5, 3),
    "ucf101": DualDefaults(30, (0, 15, 100), (0, 7, 20), 1, 1, eps=2e-3),
}
# Datasets without an official config (e.g. the offline tasks): the most common row.
DUAL_GENERIC = DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 3)


def dual_defaults(dataset: str | None) -> DualDefaults:
    return DUAL_DEFAULTS.get(dataset or "", DUAL_GENERIC)


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


class NegativeKeyProducts:
    """``f @ F-^T`` (N, M) from ``f @ F^T``, without the (N, d) x (d, M) product.

    F-_i = norm(mean_{j != c} F_{j,k}) = (S_k - F_i) * scale_i, with S_k (d,) the sum of
    the k-th shots of all classes (:func:`pseudo_negative_keys`; entry i is the k-th shot
    of class c), scale_i = (1 / n_i) / max(||(S_k - F_i) / n_i||, 1e-12) as
    ``F.normalize``'s, and 0 where no other class has a k-th shot. Hence

        f . F-_i = (f . S_k - f . F_i) * scale_i,

    an (N, d) x (d, K) product and an element-wise pass instead of N d M multiply-adds
    (half of the two affinity products of every DualAdapter step and evaluation). Equal to
    ``f @ pseudo_negative_keys(...).T`` to float rounding (the rounding of F-_i is not
    repeated; ``tests/test_dual_adapter.py``).
    """

    def __init__(self, keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.slots = shot_slots(labels, num_classes)
        num_slots = int(self.slots.max()) + 1
        self.slot_sums = keys.new_zeros(num_slots, keys.shape[1]).index_add_(0, self.slots, keys)
        # each class has at most one entry per slot: the others are the slot's other entries
        n_others = torch.bincount(self.slots, minlength=num_slots)[self.slots] - 1  # (M,)
        others = self.slot_sums[self.slots] - keys
        n = n_others.clamp(min=1).to(keys.dtype)
        norm = (others / n[:, None]).norm(dim=-1).clamp_min(1e-12)
        self.scale = torch.where(n_others > 0, 1 / (n * norm), torch.zeros_like(norm))  # (M,)
        # blocked (each class's K entries together): slot of entry (block b, position k) = k
        blocks = ClassBlocks(labels, num_classes)
        self.shots = blocks.shots if blocks.block_class is not None else 0

    def __call__(
        self, f: torch.Tensor, f_keys: torch.Tensor, f_sums: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f (N, d), f_keys (N, M) = f @ F^T -> (N, M) f @ F-^T (a new tensor).
        ``f_sums`` (N, K) = f @ S^T when the caller has it, else computed here."""
        if f_sums is None:
            f_sums = f @ self.slot_sums.T  # (N, K) f . S_k
        if self.shots:
            n, k = f.shape[0], self.shots
            out = torch.sub(f_sums[:, None, :], f_keys.view(n, -1, k)).view(n, -1)
        else:
            out = f_sums.index_select(1, self.slots).sub_(f_keys)
        return out.mul_(self.scale)


# -- losses ------------------------------------------------------------------------------


def adaptive_reranking_loss(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 4.0,
    k: int = 3,
    dots: torch.Tensor | None = None,
) -> torch.Tensor:
    """ARL: mean over samples and their k nearest prototypes j of
    max(0, d(f, t_y) + (1 - t_y . t_j) / scale - d(f, t_j)), d Euclidean.

    features (B, d), prototypes (C, d) used as they are (W+ columns), labels (B,);
    ``dots`` (B, C) ``features @ prototypes.T`` when the caller has it (DualAdapter's
    positive text logits share it), else computed here.
    As the official code (``torch.cdist``, then the k smallest), the distances to the
    prototypes come from ``||f||^2 + ||t||^2 - 2 f . t`` (the formula cdist uses when B or
    C exceeds 25), and d(f, t_y) is computed directly. The gradient is written out
    (:class:`_RerankingLoss`) on (B, C) matrices: autograd through gathers, differences
    and norms makes a dozen (B, k, d) passes and a scattered ``index_put`` per step (70%
    of the loss's time at B = 240, C = 15); equal to the cdist definition's to float
    rounding (``tests/test_dual_adapter.py``).
    """
    if dots is None:
        dots = features @ prototypes.T
    k = min(k, prototypes.shape[0])
    return _RerankingLoss.apply(features, prototypes, dots, labels, k, scale)


def _inverse(x: torch.Tensor) -> torch.Tensor:
    """1 / x where x > 0, else 0 (the gradient of a norm at 0, as torch's norm backward)."""
    return torch.where(x > 0, x.reciprocal(), torch.zeros_like(x))


class _RerankingLoss(torch.autograd.Function):
    """ARL over the k nearest prototypes n_bj (B, k), from dots = f P^T (B, C). With
    w_bj = g / (B k) on the active terms (hinge > 0), a_b = sum_j w_bj / d(f_b, t_y), and
    two (B, C) matrices holding S[b, n_bj] = w_bj / d(f_b, t_j) and Q[b, n_bj] = w_bj /
    scale:

    dL/d dots = S
    dL/dP     = -colsum(S) * P - Q^T t_y, plus on each sample's label row -a_b (f_b - t_y)
                - (Q P)_b
    dL/df     = a (f - t_y) - rowsum(S) * f

    (the rest flows through dots). Up to :data:`DENSE_MARGIN_CLASSES` classes the margins
    t_y . t_j are read from the (C, C) products P P^T, and Q enters only summed per label
    class, Y^T Q (C, C) with Y the (B, C) one-hot labels: Q^T t_y = (Y^T Q)^T P and the
    label rows' (Q P)_b summed per class are (Y^T Q) P, so the backward's products are
    (C, C) x (C, d) instead of (C, B) x (B, d); above, the margins come from the k nearest
    prototypes gathered, and Q's rows are scattered with ``index_add``.
    """

    @staticmethod
    def forward(ctx, features, prototypes, dots, labels, k: int, scale: float):
        squared = features.pow(2).sum(-1, keepdim=True) + prototypes.pow(2).sum(-1)
        squared = squared.sub_(2 * dots)  # (B, C) squared distances
        nearest = squared.topk(k, dim=1, largest=False)[1]  # (B, k)
        nearest_d = squared.gather(1, nearest).clamp_min_(0).sqrt_()  # (B, k)
        t_y = prototypes.index_select(0, labels)  # (B, d)
        to_label = features - t_y
        anchor = to_label.norm(dim=-1, keepdim=True)  # (B, 1)
        near = None  # the k nearest prototypes (B, k, d), gathered for many classes only
        if prototypes.shape[0] <= DENSE_MARGIN_CLASSES:  # t_c . t_j for every pair
            c = prototypes.shape[0]
            pairs = (prototypes @ prototypes.T).flatten()  # (C C,) t_c . t_j at c C + j
            label_dots = pairs.take(labels[:, None] * c + nearest)  # (B, k) t_y . t_j
        else:  # for the k nearest only (B k d work, not B C d)
            b, dim = nearest.shape[0], prototypes.shape[1]
            near = prototypes.index_select(0, nearest.flatten()).view(b, k, dim)
            label_dots = (near * t_y[:, None]).sum(-1)
        margins = torch.rsub(label_dots, 1).div_(scale)  # (B, k)
        hinge = anchor + margins - nearest_d
        ctx.save_for_backward(
            features, prototypes, labels, nearest, t_y, to_label, nearest_d, anchor, near
        )
        ctx.active = hinge > 0
        ctx.scale = scale
        return torch.clamp(hinge, min=0).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f, p, labels, nearest, t_y, to_label, nearest_d, anchor, near = ctx.saved_tensors
        b, k = nearest.shape
        w = ctx.active.to(f.dtype) * (grad / (b * k))  # (B, k)
        a = w.sum(-1, keepdim=True) * _inverse(anchor)  # (B, 1)
        s = f.new_zeros(b, p.shape[0]).scatter_add_(1, nearest, w * _inverse(nearest_d))
        grad_f = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_f = (a * to_label).sub_(s.sum(1, keepdim=True) * f)
        if ctx.needs_input_grad[1]:
            grad_p = s.sum(0)[:, None] * p
            label_rows = a * to_label
            if near is None:  # Q summed per label class: Y^T Q (C, C)
                c = p.shape[0]
                yq = f.new_zeros(c * c).index_add_(
                    0, (labels[:, None] * c + nearest).flatten(), (w / ctx.scale).flatten()
                )
                yq = yq.view(c, c)
                grad_p.add_((yq + yq.T) @ p)  # Q^T t_y = (Y^T Q)^T P, Y^T (Q P) = (Y^T Q) P
            else:  # Q's k entries per row
                q = w / ctx.scale
                rows = (q[..., None] * t_y[:, None]).flatten(0, 1)  # (B k, d)
                grad_p.index_add_(0, nearest.flatten(), rows)
                label_rows.add_(torch.bmm(q[:, None], near)[:, 0])
            grad_p.neg_().index_add_(0, labels, label_rows.neg_())
        grad_dots = s if ctx.needs_input_grad[2] else None
        return grad_f, grad_p, grad_dots, None, None, None


def _consistency_dim(mode: str) -> int:
    """The axis the consistency cosines run along: 0 per class ("class"), 1 along the class
    axis ("official")."""
    if mode not in ("class", "official"):
        raise ValueError(f"consistency must be 'class' or 'official', not {mode!r}")
    return 0 if mode == "class" else 1


def consistency_target(
    w_t: torch.Tensor,
    w_d: torch.Tensor,
    mode: str = "class",
    weights: tuple[float, float] = TEXT_WEIGHTS,
) -> torch.Tensor:
    """(d, C) 0.45 W_t / ||W_t|| + 0.55 W_d / ||W_d||, each normalised along the axis of
    ``mode`` (the frozen side of :func:`consistency_loss`, computed once per fit)."""
    dim = _consistency_dim(mode)
    return weights[0] * F.normalize(w_t, dim=dim, eps=COSINE_EPS) + weights[1] * F.normalize(
        w_d, dim=dim, eps=COSINE_EPS
    )


def consistency_loss(
    w_plus: torch.Tensor,
    w_t: torch.Tensor,
    w_d: torch.Tensor,
    mode: str = "class",
    weights: tuple[float, float] = TEXT_WEIGHTS,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean(0.45 * (1 - cos(W+, W_t)) + 0.55 * (1 - cos(W+, W_d))), all (d, C).

    mode "class": cosine per class column (C values); "official": along the class axis for
    each feature dimension (d values), as the official code computes it.

    Both cosines share W+'s norm, so the loss is ``0.45 + 0.55 - mean(W+ . T / ||W+||)``
    with T = :func:`consistency_target` (pass it as ``target`` to reuse it across steps):
    one product and one norm where two ``F.cosine_similarity`` make a dozen passes; equal
    to float rounding (norms clamped at 1e-7, as ``cosine_similarity``'s eps).
    """
    dim = _consistency_dim(mode)
    if target is None:
        target = consistency_target(w_t, w_d, mode, weights)
    cosines = (w_plus * target).sum(dim) / w_plus.norm(dim=dim).clamp_min(COSINE_EPS)
    return (weights[0] + weights[1] - cosines).mean()


# -- the forward -------------------------------------------------------------------------


def adapted_classifier(
    frozen: Sequence[torch.Tensor],
    residuals: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """(d, C) sum_i a_i norm(W_i + R_i^T), each column normalised (``F.normalize(..., dim=0)``
    with its eps 1e-12); W_i (d, C) frozen, R_i (C, d) residuals, a_i ``weights`` (None:
    one term, no weight). The same float operations as the written-out expression (values
    bit-identical), with the gradient written out (:class:`_AdaptedClassifier`)."""
    pairs = [t for pair in zip(frozen, residuals, strict=True) for t in pair]
    return _AdaptedClassifier.apply(None if weights is None else tuple(weights), *pairs)


class _AdaptedClassifier(torch.autograd.Function):
    """out = sum_i a_i u_i, u_i = x_i / max(||x_i||, eps) per column, x_i = W_i + R_i^T.

    Backward for G (d, C): dL/dR_i = (a_i (G - u_i (u_i . G)) / ||x_i||)^T per column, and
    a_i G / eps for a column whose norm is below eps (where F.normalize divides by eps).
    One node instead of autograd's six per term (add, transpose, norm, clamp, expand,
    divide) and the weights' products and sum: DualAdapter computes W+ and the negative
    classifier at every training step.
    """

    @staticmethod
    def forward(ctx, weights, *pairs):
        units, norms, out = [], [], None
        for i in range(0, len(pairs), 2):
            x = pairs[i] + pairs[i + 1].T
            norm = x.norm(2, 0, keepdim=True)  # (1, C)
            unit = x / norm.clamp_min(1e-12).expand_as(x)
            units.append(unit)
            norms.append(norm)
            term = unit if weights is None else weights[i // 2] * unit
            out = term if out is None else out + term
        ctx.save_for_backward(*units, *norms)
        ctx.weights = weights
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        half = len(saved) // 2
        grads: list[torch.Tensor | None] = [None]  # for weights
        for i, (unit, norm) in enumerate(zip(saved[:half], saved[half:], strict=True)):
            grads.append(None)  # the frozen W_i
            if not ctx.needs_input_grad[2 + 2 * i]:
                grads.append(None)
                continue
            g = grad if ctx.weights is None else ctx.weights[i] * grad
            out = torch.sub(g, unit * (unit * g).sum(0, keepdim=True))
            clamped = norm < 1e-12
            if bool(clamped.any()):  # a column below eps: divided by eps, not normalised
                out = torch.where(clamped, g / 1e-12, out / norm.masked_fill(clamped, 1.0))
            else:
                out = out.div_(norm)
            grads.append(out.T)
        return tuple(grads)


def stacked_products(
    f: torch.Tensor, matrices: Sequence[torch.Tensor], stack: bool = True
) -> list[torch.Tensor]:
    """``[f @ m.T for m in matrices]``, f (N, d), each m (n_i, d) -> (N, n_i).

    ``stack``: one product with the matrices stacked ((N, d) x (d, sum n_i)), its column
    blocks returned as views. On CPU a product with a few output columns runs far below
    the machine's rate (one thread: 73 us for (240, 256) x (256, 15), 157 us for five such
    matrices stacked), and autograd's backward of one product is one (sum n_i, N) x (N, d)
    product instead of one per matrix. Stacking copies the matrices each call, which
    costs more than it saves when they are large (C = 1,000, d = 1,024: 32 ms against
    28 ms), hence the switch. Equal to the separate products to float rounding.
    """
    if not stack:
        return [f @ m.T for m in matrices]
    out = f @ torch.cat(list(matrices)).T
    return list(out.split([m.shape[0] for m in matrices], dim=1))


class NarrowProducts(NamedTuple):
    """f's products with the narrow matrices of one forward (:meth:`DualCache.narrow_products`)."""

    pos_dots: torch.Tensor  # (N, C) f @ W+
    neg_dots: torch.Tensor  # (N, C) f @ norm(W_n + R_n^T)
    residual: torch.Tensor  # (N, C) f @ R_k^T
    negative_residual: torch.Tensor | None  # (N, C) f @ R_k-^T; None: no F-
    slot_sums: torch.Tensor | None  # (N, K) f @ S^T (F-'s slot sums); None: no F-


class ViewsWithKeyProducts:
    """The training rows of each epoch with their products with the frozen cache keys
    appended: ``view_fn(epoch)`` -> [V | V @ F^T] (N, d + M), V = ``views(epoch)``.

    Epoch e trains on cached view e % V (10 views, 30 epochs: each view three times), so
    V @ F^T, the largest product of a training step ((240, 256) x (256, 240) at 16 shots of
    15 classes: a fifth of the step), is computed once per view, not once per epoch; the
    rows travel through the epoch's shuffling and batching with their features. Kept per
    view (:class:`.cache_ops.TensorMemo`), at most :attr:`max_views` of them and only while
    a view's rows hold at most ``max_elements`` numbers (a few-shot cache; at ImageNet's
    16,000 entries the rows would be 1 GB: the views are returned as they are). A view
    encoded afresh each epoch (the re-encoding benchmark) is a new tensor and gets its own
    product.
    """

    max_views = 32

    def __init__(
        self,
        views: Callable[[int], torch.Tensor],
        keys: torch.Tensor,
        max_elements: int = 1 << 20,
    ) -> None:
        self.views = views
        self.keys = keys
        self.max_elements = max_elements
        self._memo = TensorMemo(capacity=self.max_views)

    def __call__(self, epoch: int) -> torch.Tensor:
        view = self.views(epoch)
        if view.shape[0] * (view.shape[1] + self.keys.shape[0]) > self.max_elements:
            return view
        return self._memo.get((view,), lambda: self._with_products(view.float()))

    def _with_products(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows, rows @ self.keys.T], 1)


class DualTerms(NamedTuple):
    """The parts of the forward that depend on no hyper-parameter."""

    pos_text: torch.Tensor  # (N, C) s * (f @ W+)
    pos_affinity: torch.Tensor  # (N, M) f @ norm(F + R_k)^T
    neg_text: torch.Tensor  # (N, C) 0.15 s (1 - f @ norm(W_n + R_n))
    neg_affinity: torch.Tensor | None  # (N, M) f @ norm(F- + R_k-)^T; None: no F-


class DualComponents(NamedTuple):
    """The forward at one beta, before (alpha, lam) blend it (see :mod:`.search`)."""

    pos_text: torch.Tensor  # (N, C)
    pos_cache: torch.Tensor  # (N, C) exp(-beta (1 - f @ K+^T)) @ L~
    neg_text: torch.Tensor  # (N, C)
    neg_cache: torch.Tensor  # (N, C) exp(-beta f @ K-^T) @ L (zeros without F-)


class DualCache(nn.Module):
    """Frozen inputs (buffers) and the five residuals of DualAdapter; one forward."""

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
    ) -> None:
        super().__init__()
        dim, num_classes = w_t.shape
        keys = keys.detach().clone().float()
        # (d, C) classifiers laid out class by class, as the (C, d) residuals are: W + R^T,
        # its normalisation over d and the consistency loss then read memory in order (on
        # the (d, C) layout W + R^T strides across rows: 10x slower at C = 1,000)
        w_t, w_d, w_n = (t.detach().float().T.contiguous().T for t in (w_t, w_d, w_n))
        values = F.one_hot(labels, num_classes).float()
        soft_values = (
            soft_labels(keys, labels, num_classes, soft_temperature, soft_shots) if soft else values
        )
        negative_keys = pseudo_negative_keys(keys, labels, num_classes)
        # Inputs, not state: kept out of state_dict, so best-epoch snapshots hold residuals only.
        buffers = {
            "keys": keys,  # F (M, d)
            "labels": labels.clone(),  # y (M,)
            "values": values,  # L (M, C)
            "soft_values": soft_values,  # L~ (M, C)
            "negative_keys": negative_keys,  # F- (M, d)
            "w_t": w_t,  # (d, C)
            "w_d": w_d,
            "w_n": w_n,
        }
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor, persistent=False)
        self.logit_scale = float(logit_scale)
        self.negative_cache = negative_cache
        self._products = ValueProducts()
        self._residual_keys = BufferDerived(ResidualKeys)
        self._negative_products = BufferDerived(NegativeKeyProducts)
        self._key_products = KeptProduct()
        zeros = lambda: nn.Parameter(torch.zeros(num_classes, dim, device=keys.device))
        self.r_t, self.r_d, self.r_k = zeros(), zeros(), zeros()  # positive residuals
        self.r_n, self.r_kn = zeros(), zeros()  # negative residuals (R_n, R_k-)

    def positive_classifier(self) -> torch.Tensor:
        """W+ (d, C) = 0.45 norm(W_t + R_t^T) + 0.55 norm(W_d + R_d^T)."""
        return adapted_classifier((self.w_t, self.w_d), (self.r_t, self.r_d), TEXT_WEIGHTS)

    def negative_classifier(self) -> torch.Tensor:
        """(d, C) norm(W_n + R_n^T)."""
        return adapted_classifier((self.w_n,), (self.r_n,))

    def positive_keys(self) -> torch.Tensor:
        """(M, d) norm(F + R_k[y])."""
        return F.normalize(self.keys + self.r_k[self.labels], dim=-1)

    def negative_keys_adapted(self) -> torch.Tensor:
        """(M, d) norm(F- + R_k-[y])."""
        return F.normalize(self.negative_keys + self.r_kn[self.labels], dim=-1)

    def narrow_products(
        self, f: torch.Tensor, w_plus: torch.Tensor | None = None
    ) -> NarrowProducts:
        """f's products with the forward's narrow matrices: W+ (``w_plus`` when the caller
        has computed it this step), norm(W_n + R_n^T), R_k and, with F-, R_k- and F-'s slot
        sums; one product with their stack up to :data:`STACKED_PRODUCT_CLASSES` classes
        (:func:`stacked_products`)."""
        w_plus = self.positive_classifier() if w_plus is None else w_plus
        matrices = [w_plus.T, self.negative_classifier().T, self.r_k]
        if self.negative_cache:
            products = self._negative_products.get(
                "keys", self.keys, self.labels, num_classes=self.r_k.shape[0]
            )
            matrices += [self.r_kn, products.slot_sums]
        stack = self.r_k.shape[0] <= STACKED_PRODUCT_CLASSES
        parts = stacked_products(f, matrices, stack)
        return NarrowProducts(*parts, *[None] * (len(NarrowProducts._fields) - len(parts)))

    def terms(
        self,
        f: torch.Tensor,
        narrow: NarrowProducts | None = None,
        f_keys: torch.Tensor | None = None,
    ) -> DualTerms:
        """The beta-free parts; the affinities are f @ K+^T and f @ K-^T with K+ = norm(F +
        R_k[y]) and K- = norm(F- + R_k-[y]), computed without forming those (M, d) matrices
        (:class:`.cache_ops.ResidualKeys`; equal to float rounding). One (N, d) x (d, M)
        product, f @ F^T, serves both: f @ F-^T follows from it
        (:class:`NegativeKeyProducts`). ``narrow``: :meth:`narrow_products` when the caller
        has computed them this step (the loss's ARL uses f @ W+ too), else computed here.
        ``f_keys`` (N, M): f @ F^T when the caller has it (:class:`ViewsWithKeyProducts`; it
        is overwritten), else computed here."""
        s = self.logit_scale
        c = self.r_k.shape[0]
        if narrow is None:
            narrow = self.narrow_products(f)
        positive = self._residual_keys.get("keys", self.keys, self.labels, num_classes=c)
        f_frozen = f.detach()  # the frozen products: the affinities' backward is written out
        if f_keys is None:  # (N, M) f @ F^T, kept for the val features
            f_keys = self._key_products(f, self.keys)
        neg_affinity = None
        if self.negative_cache:
            negative = self._residual_keys.get(
                "negative_keys", self.negative_keys, self.labels, num_classes=c
            )
            products = self._negative_products.get("keys", self.keys, self.labels, num_classes=c)
            frozen = products(f_frozen, f_keys, narrow.slot_sums.detach())
            neg_affinity = negative.affinity(f, self.r_kn, frozen, narrow.negative_residual)
        return DualTerms(
            pos_text=s * narrow.pos_dots,
            # overwrites f_keys
            pos_affinity=positive.affinity(f, self.r_k, f_keys, narrow.residual),
            neg_text=NEGATIVE_TEXT_SCALE * s * (1 - narrow.neg_dots),
            neg_affinity=neg_affinity,
        )

    def components(self, terms: DualTerms, beta: float) -> DualComponents:
        """The cache terms at one beta; L~ and L applied as per-class sums (N M work, not
        2 N M C: :class:`.cache_ops.ValueProduct`)."""
        soft = self._products.get("soft_values", self.soft_values)
        pos_cache = cache_term(terms.pos_affinity, beta, soft)
        if terms.neg_affinity is None:
            neg_cache = torch.zeros_like(terms.neg_text)
        else:
            values = self._products.get("values", self.values)
            neg_cache = cache_term(terms.neg_affinity, beta, values, shifted=False)
        return DualComponents(terms.pos_text, pos_cache, terms.neg_text, neg_cache)

    def stacked_components(self, terms: DualTerms, betas: Sequence[float]) -> DualComponents:
        """:meth:`components` at several betas, stacked along the rows (beta-major: (B N,
        C)), without autograd; bit-identical rows (:func:`.cache_ops.stacked_cache_terms`)."""
        b = len(betas)
        soft = self._products.get("soft_values", self.soft_values)
        pos_cache = stacked_cache_terms(terms.pos_affinity, betas, soft)
        if terms.neg_affinity is None:
            neg_cache = torch.zeros_like(pos_cache)
        else:
            values = self._products.get("values", self.values)
            neg_cache = stacked_cache_terms(terms.neg_affinity, betas, values, shifted=False)
        return DualComponents(
            terms.pos_text.repeat(b, 1), pos_cache, terms.neg_text.repeat(b, 1), neg_cache
        )

    @staticmethod
    def combine(
        c: DualComponents, alpha: torch.Tensor | float, lam: torch.Tensor | float
    ) -> torch.Tensor:
        """lam * pos + (1 - lam) * neg; alpha and lam may carry leading grid axes."""
        pos = c.pos_text + alpha * c.pos_cache
        neg = c.neg_text + alpha * c.neg_cache
        return lam * pos + (1 - lam) * neg

    def forward(
        self,
        f: torch.Tensor,
        beta: float,
        alpha: float,
        lam: float,
        narrow: NarrowProducts | None = None,
        f_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, d) normalised features -> (N, C) unified logits. ``narrow``:
        :meth:`narrow_products` when the caller has computed them this step (the loss's ARL
        uses f @ W+ too), else computed here; ``f_keys``: see :meth:`terms`."""
        terms = self.terms(f, narrow, f_keys)
        return self.combine(self.components(terms, beta), alpha, lam)

    def rows(self) -> int:
        """Images per chunk at evaluation, so that an (rows, M) affinity stays bounded."""
        return LOGITS_CHUNK or row_chunks(self.keys.shape[0])

    def chunked(self, f: torch.Tensor, beta: float, alpha: float, lam: float) -> torch.Tensor:
        """The forward over f (N, d) in chunks of :meth:`rows` (memory flat in N)."""
        return chunked(lambda x: self(x.float(), beta, alpha, lam), f, self.rows())

    def positive_parameters(self) -> list[nn.Parameter]:
        return [self.r_t, self.r_d, self.r_k]

    def negative_parameters(self) -> list[nn.Parameter]:
        return [self.r_n, self.r_kn] if self.negative_cache else [self.r_n]


@register_method
class DualAdapter(FeatureMethod):
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
        progress: bool = False

    module: DualCache | None = None
    chosen: dict | None = None
    _trainable: int = 0

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.paths not in ("both", "positive", "negative"):
            raise ValueError("paths must be 'both', 'positive' or 'negative'")
        _consistency_dim(self.options.consistency)  # refuses an unknown mode, naming it
        if self.options.version not in VERSIONS:
            raise ValueError(f"dual_adapter: version must be one of {sorted(VERSIONS)}")

    def soft_label_settings(self, data: FeatureData) -> tuple[float, int | None]:
        """(temperature, K for every group or None for each group's own size) of the soft
        labels under the chosen ``version``."""
        o = self.options
        temperature = VERSIONS[o.version]["soft_temperature"]
        if o.soft_temperature is not None:
            temperature = o.soft_temperature
        shots = None
        if o.version == 2:
            shots = data.shots or round(data.train_labels.shape[0] / data.num_classes)
        return temperature, shots

    # -- settings --------------------------------------------------------------------------
    def _scales(self, data: FeatureData) -> tuple[float, float]:
        return grid_scales(data.logit_scale, self.options.beta_scale, self.options.alpha_scale)

    def initial(self, data: FeatureData) -> tuple[float, float, float]:
        """(beta, alpha, lam) used while training; beta and alpha rescaled."""
        o, d = self.options, dual_defaults(self.options.dataset)
        rb, ra = self._scales(data)
        beta = rb * (o.init_beta if o.init_beta is not None else d.init_beta)
        alpha = ra * (o.init_alpha if o.init_alpha is not None else d.init_alpha)
        lam = {"positive": 1.0, "negative": 0.0}.get(
            o.paths, o.init_lam if o.init_lam is not None else d.init_lam
        )
        return beta, alpha, lam

    def grids(self, data: FeatureData) -> tuple[list[float], list[float], list[float]]:
        """The beta, alpha and lam grids of the search (lam: one value when fixed)."""
        o, d = self.options, dual_defaults(self.options.dataset)
        rb, ra = self._scales(data)
        betas = linear_grid(*(o.beta_range or d.beta), scale=rb)
        alphas = linear_grid(*(o.alpha_range or d.alpha), scale=ra)
        if o.paths != "both" or not o.search_lam:
            lams = [self.initial(data)[2]]
        else:
            lams = linear_grid(*(o.lam_range or d.lam))
        return betas, alphas, lams

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
                    "dual_adapter needs the 'negative' classifier (negative templates) for "
                    "its negative path; give the dataset negative templates or use "
                    "paths='positive'"
                )
            w_n = w_t  # never used with lam = 1
        return w_t, w_d, w_n

    # -- fit / logits ----------------------------------------------------------------------
    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o, d = self.options, dual_defaults(self.options.dataset)
        notes: list[str] = []
        w_t, w_d, w_n = self._classifiers(data, notes)
        temperature, soft_shots = self.soft_label_settings(data)
        module = self.module = DualCache(
            data.cache_keys,
            data.train_labels,
            w_t,
            w_d,
            w_n,
            data.logit_scale,
            soft=o.soft_labels,
            negative_cache=o.negative_cache,
            soft_temperature=temperature,
            soft_shots=soft_shots,
        ).to(data.device)
        beta, alpha, lam = self.initial(data)
        result = FitResult(notes=notes)
        self._trainable = 0
        if o.train:
            result = self._train(data, module, beta, alpha, lam, seed)
            result.notes[:0] = notes
        chosen = {
            "version": o.version,
            "soft_temperature": temperature,
            "init_beta": beta,
            "init_alpha": alpha,
            "init_lam": lam,
            "beta_scale": self._scales(data)[0],
            "alpha_scale": self._scales(data)[1],
            "epochs": (o.epochs or d.epochs) if o.train else 0,
        }
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
            groups.append({"params": module.positive_parameters(), "lr": lr})
        if o.paths != "positive":
            groups.append({"params": module.negative_parameters(), "lr": lr * o.negative_lr_factor})
        self._trainable = sum(p.numel() for g in groups for p in g["params"])
        return adamw(groups, weight_decay=o.weight_decay, eps=eps)

    def _train(self, data, module: DualCache, beta, alpha, lam, seed) -> FitResult:
        o, d = self.options, dual_defaults(self.options.dataset)
        optimizer = self.optimizer(module, data)
        loss_fn = self.training_loss(module, beta, alpha, lam)
        return fit_epochs(
            module,
            optimizer,
            data,
            epochs=o.epochs or d.epochs,
            batch_size=o.batch_size,
            loss_fn=loss_fn,
            logits_fn=lambda f: module.chunked(f, beta, alpha, lam),
            seed=seed,
            progress=o.progress,
            desc=self.name,
            view_fn=ViewsWithKeyProducts(data.view, module.keys),
        )

    def training_loss(
        self, module: DualCache, beta: float, alpha: float, lam: float
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss of one training step, ``loss(f (B, d), y (B,)) -> scalar``: CE of the
        unified logits at (beta, alpha, lam), plus ARL and the weighted consistency unless
        ``paths="negative"``. W+ is computed once per step (the logits and ARL share it).
        ``f`` may also be (B, d + M), the rows of :class:`ViewsWithKeyProducts`: the features
        with their products with the cache keys."""
        o = self.options
        target = consistency_target(module.w_t, module.w_d, o.consistency)
        dim = module.keys.shape[1]

        def loss_fn(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            f, f_keys = f.float(), None
            if f.shape[1] > dim:  # [f | f @ F^T]: the affinities build in f_keys's memory
                f, f_keys = f[:, :dim], f[:, dim:].contiguous()
            w_plus = module.positive_classifier()
            # pos_dots (B, C) = f @ W+: the positive text logits / s and ARL's f . t
            narrow = module.narrow_products(f, w_plus)
            loss = F.cross_entropy(module(f, beta, alpha, lam, narrow, f_keys), y)
            if o.paths != "negative":
                loss = loss + o.arl_weight * adaptive_reranking_loss(
                    f, w_plus.T, y, scale=o.arl_scale, k=o.arl_k, dots=narrow.pos_dots
                )
                loss = loss + o.consistency_weight * consistency_loss(
                    w_plus, module.w_t, module.w_d, mode=o.consistency, target=target
                )
            return loss

        return loss_fn

    def search(
        self, features: torch.Tensor, labels: torch.Tensor, data: FeatureData
    ) -> SearchResult:
        """The (beta, alpha, lam) grid search on (features, labels), vectorised, in chunks
        of features (the affinities are (rows, M): memory flat in the val size)."""
        module = self._module()
        betas, alphas, lams = self.grids(data)
        with torch.no_grad():
            return grid_search_chunked(
                lambda f: module.terms(f.float()),
                module.components,
                module.combine,
                features,
                labels,
                betas,
                alphas,
                lams,
                rows=module.rows(),
                stacked=module.stacked_components,
            )

    def _module(self) -> DualCache:
        if self.module is None:
            raise RuntimeError(f"{self.name}: call fit() before logits()")
        return self.module

    def logits(
        self,
        features: torch.Tensor,
        *,
        beta: float | None = None,
        alpha: float | None = None,
        lam: float | None = None,
    ) -> torch.Tensor:
        """(B, d) -> (B, C) at the chosen (beta, alpha, lam), or at the values given."""
        module, c = self._module(), self.chosen
        beta = c["beta"] if beta is None else beta
        alpha = c["alpha"] if alpha is None else alpha
        lam = c["lam"] if lam is None else lam
        with torch.no_grad():  # in chunks: the affinities are (B, M)
            return module.chunked(features, beta, alpha, lam)

    def trainable_parameters(self) -> int:
        """Residual entries that train: 5 C d for the full method, 0 training-free."""
        return self._trainable
