"""DualAdapter's fast path: the forward, the losses and the search's components computed
without forming the adapted keys or the dense value products.

:mod:`fewclip.methods.dual_adapter` states the method in the paper's names (``K_pos``,
``K_neg``, ``W_plus``, ``W_neg``); with ``fast=True`` (the default) its forward, losses and
search come here:

- :class:`DualKernels`: built once from a cache's frozen inputs (keys, pseudo-negative
  keys, labels, values); the affinities through :class:`.residual_keys.ResidualKeys`, f @
  F-^T from f @ F^T (:class:`.residual_keys.NegativeKeyProducts`), the value products as
  per-class sums (:class:`.cache.ValueProduct`), f's products with the narrow matrices
  (W+, the negative classifier, R_k, R_k-, F-'s slot sums) as one product with their
  stack (:func:`stacked_products`);
- :func:`reranking_loss`: ARL with a written-out gradient;
- :func:`consistency_loss`: the consistency loss as one product with a precomputed target.

Each equals the plain formula to float rounding, values and gradients; the tests name
them in each docstring and ``tests/test_dual_adapter.py::test_fast_equals_plain_*`` compare
whole forwards, training steps and searches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cache import ValueProduct, cache_term, stacked_cache_terms
from .residual_keys import NegativeKeyProducts, ResidualKeys

COSINE_EPS = 1e-7  # the consistency cosines' norm floor, as F.cosine_similarity's eps
#: ARL's margins t_y . t_j from one (B, d) x (d, C) product up to this many classes, else
#: from the k nearest prototypes gathered (B k d work instead of B C d)
DENSE_MARGIN_CLASSES = 64
#: Up to this many classes f's products with the narrow matrices of a forward (W+, R_k,
#: R_k-, the negative classifier and F-'s slot sums) are one product with their stack
#: (:func:`stacked_products`); above, one product each
STACKED_PRODUCT_CLASSES = 64


def reranking_loss(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 4.0,
    k: int = 3,
    dots: torch.Tensor | None = None,
) -> torch.Tensor:
    """ARL (:func:`fewclip.methods.dual_adapter.adaptive_reranking_loss`) with its gradient
    written out (:class:`_RerankingLoss`) on (B, C) matrices, where autograd through
    gathers, differences and norms makes a dozen (B, k, d) passes and a scattered
    ``index_put`` per step.

    features (B, d), prototypes (C, d) used as they are (W+ columns), labels (B,);
    ``dots`` (B, C) ``features @ prototypes.T`` when the caller has it (DualAdapter's
    positive text logits share it), else computed here. The distances to the prototypes
    come from ``||f||^2 + ||t||^2 - 2 f . t`` (the formula ``torch.cdist`` uses when B or C
    exceeds 25). Equal to the plain loss to float rounding, values and gradients
    (``tests/test_dual_adapter.py::test_adaptive_reranking_loss_fast_equals_plain``).
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


def consistency_target(
    w_t: torch.Tensor, w_d: torch.Tensor, dim: int, weights: tuple[float, float]
) -> torch.Tensor:
    """(d, C) a_t W_t / ||W_t|| + a_d W_d / ||W_d||, each normalised along ``dim`` (the
    frozen side of :func:`consistency_loss`, computed once per fit)."""
    return weights[0] * F.normalize(w_t, dim=dim, eps=COSINE_EPS) + weights[1] * F.normalize(
        w_d, dim=dim, eps=COSINE_EPS
    )


def consistency_loss(
    w_plus: torch.Tensor, target: torch.Tensor, dim: int, weights: tuple[float, float]
) -> torch.Tensor:
    """mean(a_t (1 - cos(W+, W_t)) + a_d (1 - cos(W+, W_d))) along ``dim``, with
    ``target`` = :func:`consistency_target`.

    Both cosines share W+'s norm, so the loss is ``a_t + a_d - mean(W+ . T / ||W+||)``:
    one product and one norm where two ``F.cosine_similarity`` make a dozen passes; equal
    to float rounding (norms clamped at 1e-7, as ``cosine_similarity``'s eps;
    ``tests/test_dual_adapter.py::test_consistency_loss_equals_two_cosine_similarities``).
    """
    cosines = (w_plus * target).sum(dim) / w_plus.norm(dim=dim).clamp_min(COSINE_EPS)
    return (weights[0] + weights[1] - cosines).mean()


def stacked_products(
    f: torch.Tensor, matrices: Sequence[torch.Tensor], stack: bool = True
) -> list[torch.Tensor]:
    """``[f @ m.T for m in matrices]``, f (N, d), each m (n_i, d) -> (N, n_i).

    ``stack``: one product with the matrices stacked ((N, d) x (d, sum n_i)), its column
    blocks returned as views. On CPU a product with a few output columns runs far below
    the machine's rate, and autograd's backward of one product is one (sum n_i, N) x (N, d)
    product instead of one per matrix. Stacking copies the matrices each call, which
    costs more than it saves when they are large, hence the switch
    (:data:`STACKED_PRODUCT_CLASSES`; docs/design/dual_adapter_kernels.md). Equal to the
    separate products to float rounding
    (``tests/test_dual_adapter.py::test_stacked_products_equal_one_product_each``).
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


class DualTerms(NamedTuple):
    """The parts of the forward that depend on no hyper-parameter."""

    pos_text: torch.Tensor  # (N, C) s * (f @ W+)
    pos_affinity: torch.Tensor  # (N, M) f @ K+^T
    neg_text: torch.Tensor  # (N, C) 0.15 s (1 - f @ W-)
    neg_affinity: torch.Tensor | None  # (N, M) f @ K-^T; None: no F-


class DualComponents(NamedTuple):
    """The forward at one beta, before (alpha, lam) blend it (see :mod:`..search`)."""

    pos_text: torch.Tensor  # (N, C)
    pos_cache: torch.Tensor  # (N, C) exp(-beta (1 - f @ K+^T)) @ L~
    neg_text: torch.Tensor  # (N, C)
    neg_cache: torch.Tensor  # (N, C) exp(-beta f @ K-^T) @ L (zeros without F-)


class DualKernels:
    """The fast forward of a DualAdapter cache, built once from its frozen inputs.

    keys F and negative_keys F- (M, d), labels y and shot slots k (M,), values L and
    soft_values L~ (M, C).
    The residuals and classifiers are read from the module at each call (they train).
    """

    def __init__(
        self,
        keys: torch.Tensor,
        negative_keys: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor,
        values: torch.Tensor,
        soft_values: torch.Tensor,
        negative_cache: bool,
    ) -> None:
        num_classes = values.shape[1]
        self.keys = keys
        self.positive = ResidualKeys(keys, labels, num_classes)
        self.values = ValueProduct(values)
        self.soft_values = ValueProduct(soft_values)
        self.negative_cache = negative_cache
        self.stack = num_classes <= STACKED_PRODUCT_CLASSES
        if negative_cache:
            self.negative = ResidualKeys(negative_keys, labels, num_classes)
            self.negative_products = NegativeKeyProducts(keys, labels, num_classes, slots)

    def narrow_products(self, module, f: torch.Tensor, w_plus: torch.Tensor) -> NarrowProducts:
        """f's products with the forward's narrow matrices: W+ (computed by the caller this
        step), the negative classifier, R_k and, with F-, R_k- and F-'s slot sums."""
        matrices = [w_plus.T, module.negative_classifier().T, module.r_k]
        if self.negative_cache:
            matrices += [module.r_kn, self.negative_products.slot_sums]
        parts = stacked_products(f, matrices, self.stack)
        return NarrowProducts(*parts, *[None] * (len(NarrowProducts._fields) - len(parts)))

    def terms(
        self,
        module,
        f: torch.Tensor,
        narrow: NarrowProducts | None = None,
        f_keys: torch.Tensor | None = None,
    ) -> DualTerms:
        """The beta-free parts. One (N, d) x (d, M) product, f @ F^T, serves both
        affinities (it is read only). ``narrow``: :meth:`narrow_products` when the caller
        has them this step; ``f_keys``: f @ F^T when the caller has it
        (:class:`FrozenValidation`)."""
        if narrow is None:
            narrow = self.narrow_products(module, f, module.positive_classifier())
        if f_keys is None:
            f_keys = f.detach() @ self.keys.T
        neg_affinity = None
        if self.negative_cache:
            frozen = self.negative_products(f.detach(), f_keys, narrow.slot_sums.detach())
            neg_affinity = self.negative.affinity(f, module.r_kn, frozen, narrow.negative_residual)
        s = module.logit_scale
        return DualTerms(
            pos_text=s * narrow.pos_dots,
            pos_affinity=self.positive.affinity(f, module.r_k, f_keys, narrow.residual),
            neg_text=module.negative_text_scale * s * (1 - narrow.neg_dots),
            neg_affinity=neg_affinity,
        )

    def components(self, terms: DualTerms, beta: float) -> DualComponents:
        """The cache terms at one beta; L~ and L applied as per-class sums."""
        pos_cache = cache_term(terms.pos_affinity, beta, self.soft_values)
        if terms.neg_affinity is None:
            neg_cache = torch.zeros_like(terms.neg_text)
        else:
            neg_cache = cache_term(terms.neg_affinity, beta, self.values, shifted=False)
        return DualComponents(terms.pos_text, pos_cache, terms.neg_text, neg_cache)

    def stacked_components(self, terms: DualTerms, betas: Sequence[float]) -> DualComponents:
        """:meth:`components` at several betas, stacked along the rows (beta-major: (B N,
        C)), without autograd; bit-identical rows (:func:`.cache.stacked_cache_terms`)."""
        b = len(betas)
        pos_cache = stacked_cache_terms(terms.pos_affinity, betas, self.soft_values)
        if terms.neg_affinity is None:
            neg_cache = torch.zeros_like(pos_cache)
        else:
            neg_cache = stacked_cache_terms(terms.neg_affinity, betas, self.values, shifted=False)
        return DualComponents(
            terms.pos_text.repeat(b, 1), pos_cache, terms.neg_text.repeat(b, 1), neg_cache
        )

    def loss(
        self,
        module,
        f: torch.Tensor,
        y: torch.Tensor,
        setting: tuple[float, float, float],
        weights: tuple[float, float] | None,
        arl: tuple[float, int],
        target: torch.Tensor,
        dim: int,
    ) -> torch.Tensor:
        """One training step's loss for f (B, d), y (B,): CE of the
        unified logits at ``setting`` (beta, alpha, lam) + weights[0] ARL (scale, k =
        ``arl``) + weights[1] consistency (``target`` along ``dim``); W+ is computed once
        (the logits and ARL share it, and f @ W+). Equal to the plain loss to float
        rounding (``tests/test_dual_adapter.py::test_fast_training_equals_plain``)."""
        beta, alpha, lam = setting
        f = f.float()
        w_plus = module.positive_classifier()
        narrow = self.narrow_products(module, f, w_plus)  # narrow.pos_dots = f @ W+
        terms = self.terms(module, f, narrow)
        loss = F.cross_entropy(module.combine(self.components(terms, beta), alpha, lam), y)
        if weights is not None:  # None: the negative path alone (no ARL, no consistency)
            loss = loss + weights[0] * reranking_loss(
                f, w_plus.T, y, scale=arl[0], k=arl[1], dots=narrow.pos_dots
            )
            loss = loss + weights[1] * consistency_loss(w_plus, target, dim, module.text_weights)
        return loss


#: Most entries of the val features' key products :class:`FrozenValidation` keeps for a fit
#: (2^22 floats = 16 MB); a larger val set is evaluated in chunks every epoch
KEPT_PRODUCT_ELEMENTS = 1 << 22


class FrozenValidation:
    """The per-epoch validation of a fit, ``module.chunked(features, *setting)``, with the
    val features' product with the frozen keys, f @ F^T (N, M), computed once when the
    fit starts: neither the val features nor the keys change during a fit, so every epoch
    would recompute the same product (the residuals enter through the narrow products).

    Kept only up to :data:`KEPT_PRODUCT_ELEMENTS` entries; a larger val set, or features
    other than the fit's val features, go through ``module.chunked``. The same values bit
    for bit: the same product of the same chunks of rows, read only
    (``tests/test_dual_adapter.py::test_frozen_validation_equals_the_chunked_forward``).
    """

    def __init__(self, module, features: torch.Tensor, setting: tuple[float, float, float]):
        self.module, self.features, self.setting = module, features, setting
        self.rows = module.rows()
        self.products: list[torch.Tensor] | None = None
        if features.shape[0] * module.keys.shape[0] <= KEPT_PRODUCT_ELEMENTS:
            with torch.no_grad():
                keys = module.kernels.keys
                self.products = [c.float() @ keys.T for c in features.split(self.rows)]

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, C) logits at the fit's setting."""
        module, (beta, alpha, lam) = self.module, self.setting
        if self.products is None or f is not self.features:
            return module.chunked(f, beta, alpha, lam)
        out = []
        for chunk, f_keys in zip(f.split(self.rows), self.products, strict=True):
            terms = module.kernels.terms(module, chunk.float(), f_keys=f_keys)
            out.append(module.combine(module.kernels.components(terms, beta), alpha, lam))
        return out[0] if len(out) == 1 else torch.cat(out)
