"""The cache keys adapted by a per-class residual, and the pseudo-negative keys, as products
with the frozen keys.

:class:`ResidualKeys`: ``f @ norm(F + R[y])^T`` without forming the (M, d) matrix
F + R[y], forward and written-out backward. :class:`NegativeKeyProducts`: ``f @ F-^T``
from ``f @ F^T`` (the negative-key identity). Both are built once from frozen inputs (the
cache keys and labels), so their derived tensors are computed when the cache is built, not
per call. Equality tests: ``tests/test_cache_ops.py``
(``test_residual_keys_affinity_equals_normalising_the_adapted_keys``) and
``tests/test_dual_adapter.py``
(``test_negative_key_products_equal_the_product_with_the_pseudo_negative_keys``).
"""

from __future__ import annotations

import torch

from .cache import ClassBlocks


class NegativeKeyProducts:
    """``f @ F-^T`` (N, M) from ``f @ F^T``, without the (N, d) x (d, M) product.

    F-_i = norm(mean_{j != c} F_{j,k}) = (S_k - F_i) * scale_i, with S_k (d,) the sum of
    the k-th shots of all classes (entry i is the k-th shot of class c), scale_i = (1 /
    n_i) / max(||(S_k - F_i) / n_i||, 1e-12) as ``F.normalize``'s, and 0 where no other
    class has a k-th shot. Hence

        f . F-_i = (f . S_k - f . F_i) * scale_i,

    an (N, d) x (d, K) product and an element-wise pass instead of N d M multiply-adds.
    Equal to ``f @ pseudo_negative_keys(...).T`` to float rounding (the rounding of F-_i
    is not repeated).
    """

    def __init__(
        self, keys: torch.Tensor, labels: torch.Tensor, num_classes: int, slots: torch.Tensor
    ) -> None:
        self.slots = slots  # (M,) k of each entry (``dual_adapter.shot_slots``)
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
        """f (N, d), f_keys (N, M) = f @ F^T (read only) -> (N, M) f @ F-^T, a new tensor.
        ``f_sums`` (N, K) = f @ S^T when the caller has it, else computed here."""
        if f_sums is None:
            f_sums = f @ self.slot_sums.T  # (N, K) f . S_k
        if self.shots:
            n, k = f.shape[0], self.shots
            out = torch.sub(f_sums[:, None, :], f_keys.view(n, -1, k)).view(n, -1)
        else:
            out = f_sums.index_select(1, self.slots).sub_(f_keys)
        return out.mul_(self.scale)


class ResidualKeys:
    """Frozen cache keys F (M, d) with labels y (M,) and a per-class residual R (C, d):
    the affinity ``f @ norm(F + R[y])^T`` without ever forming the (M, d) matrix F + R[y].

    Since F is frozen, the adapted keys' products split into
    ``f @ F^T + (f @ R^T)[:, y]`` (one (N, M) product with the frozen keys and an (N, C)
    one with the residuals), and their squared norms into
    ``||F_i||^2 + 2 F_i . R_{y_i} + ||R_{y_i}||^2``. The backward needs no (M, d) product
    either: R's gradient is ``(G~ summed per class)^T @ f`` minus a per-class sum of
    ``w_i (F_i + R_c)`` (see :class:`_ResidualAffinity`). Per step this removes the (M, d)
    gather, add and normalisation of the adapted keys and the (M, N) x (N, d) key-gradient
    product, which grow with M as the affinity does.

    The per-class dot products and sums run on a (C, K, d) view of F when each class's K
    entries are listed together (a few-shot cache, :class:`ClassBlocks`); otherwise on
    gathered rows.
    The values equal ``f @ F.normalize(F + R[y], dim=-1).T`` to float rounding.
    """

    def __init__(self, keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.keys = keys
        self.labels = labels
        self.num_classes = num_classes
        self.key_sq = keys.pow(2).sum(-1)  # (M,)
        self.classes = ClassBlocks(labels, num_classes)
        blocked = self.classes.block_class is not None
        # (C, K, d): the keys block by block when each class's entries are listed together
        self.blocks = keys.view(num_classes, -1, keys.shape[1]) if blocked else None

    def row_dots(self, residual: torch.Tensor) -> torch.Tensor:
        """(M,) F_i . R_{y_i}.

        Blocked: one (1, d) x (d, K) product per class, the keys read through a transposed
        view (on CPU torch's bmm runs that form several times faster than the same products
        written (K, d) x (d, 1); docs/design/dual_adapter_kernels.md); equal to float
        rounding.
        """
        if self.blocks is None:
            return (self.keys * residual[self.labels]).sum(-1)
        per_block = self.classes.by_block(residual, 0).unsqueeze(1)  # (C, 1, d)
        return torch.bmm(per_block, self.blocks.transpose(1, 2)).flatten()

    def class_sums(self, w: torch.Tensor) -> torch.Tensor:
        """(C, d) sum over the entries i of class c of w_i F_i, for w (M,)."""
        if self.blocks is None:
            out = self.keys.new_zeros(self.num_classes, self.keys.shape[1])
            return out.index_add_(0, self.labels, self.keys * w[:, None])
        sums = torch.bmm(w.view(self.num_classes, 1, -1), self.blocks).squeeze(1)
        return self.classes.in_class_order(sums, 0)

    def affinity(
        self,
        f: torch.Tensor,
        residual: torch.Tensor,
        frozen: torch.Tensor | None = None,
        f_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f (N, d) @ norm(F + R[y])^T -> (N, M); differentiable in f and R.

        ``frozen`` (N, M): ``f @ F^T`` when the caller has it (read only); else computed
        here. ``f_residual`` (N, C):
        ``f @ R^T`` when the caller has it (DualAdapter takes it from one product with all
        its narrow matrices), carrying its own autograd history; else computed here."""
        if f_residual is None:
            f_residual = f @ residual.T
        return _ResidualAffinity.apply(f, residual, f_residual, self, frozen)


class _ResidualAffinity(torch.autograd.Function):
    """out = (f @ F^T + P[:, y]) * inv with P = f @ R^T (N, C) an input (autograd carries
    its own product), inv_i = 1 / max(||F_i + R_{y_i}||, 1e-12).

    Backward for G = dL/d out (N, M), with G~ = G * inv and w_i = inv_i^2 sum_n G_ni out_ni:
    dL/dP = G~ summed over each class's columns (N, C);
    dL/dR = - sum_{i in c} w_i (F_i + R_c) (the norms' part; P's part flows through P);
    dL/df = G~ @ F (only when f needs it; P's part flows through P).
    """

    @staticmethod
    def forward(ctx, f, residual, f_residual, rk: ResidualKeys, frozen: torch.Tensor | None):
        dots = rk.row_dots(residual)  # (M,)
        sq = rk.key_sq + 2 * dots + residual.pow(2).sum(-1)[rk.labels]
        norm = sq.clamp_min(0).sqrt_()
        inv = norm.clamp_min(1e-12).reciprocal_()  # as F.normalize's eps
        # f F^T + (f R^T)[:, y] in one new (N, M) tensor (the caller's f F^T is only read)
        if frozen is None:
            out = rk.classes.add_gathered_(f @ rk.keys.T, f_residual)
        else:
            out = rk.classes.add_gathered(frozen, f_residual)
        out = out.mul_(inv)
        ctx.save_for_backward(residual, inv, out, norm > 1e-12)
        ctx.rk = rk
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        residual, inv, out, unclamped = ctx.saved_tensors
        rk: ResidualKeys = ctx.rk
        g = grad * inv  # (N, M), the one (N, M) allocation of the backward
        grad_f = grad_r = grad_p = None
        if ctx.needs_input_grad[2]:
            grad_p = rk.classes.sum(g)  # (N, C)
        if ctx.needs_input_grad[0]:
            grad_f = g @ rk.keys
        if ctx.needs_input_grad[1]:
            w = g.mul_(out).sum(0).mul_(inv).mul_(unclamped)  # (M,) inv^2 sum_n G out
            w_class = rk.classes.sum(w[None])[0]  # (C,)
            grad_r = rk.class_sums(w).add_(residual * w_class[:, None]).neg_()
        return grad_f, grad_r, grad_p, None, None
