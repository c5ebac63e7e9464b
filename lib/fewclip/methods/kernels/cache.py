"""Fast cache products shared by the key-value cache methods (Tip-Adapter, DualAdapter, APE).

Both methods compute cache logits ``exp(-beta * (1 - f @ K^T)) @ L`` with an (N, M)
kernel and an (M, C) value matrix L whose rows have one nonzero entry: one-hot labels,
or DualAdapter's soft labels (K_c * w_i at the entry's class). The dense product costs
2 N M C flops; with one nonzero per row it is a per-class sum,

    (E @ L)[n, c] = sum_{i: y_i = c} L[i, y_i] * E[n, i]

which :class:`ValueProduct` computes with ``index_add`` in N M operations (C times
fewer). The values agree with the dense product to float rounding (the
dense product adds the same nonzero terms plus exact zeros, in another order); a value
matrix with more than one nonzero in some row falls back to the dense product.

Each equality has its test in ``tests/test_cache_ops.py`` (fast == plain, values and
gradients, over blocked, in-order, shuffled and unbalanced layouts).

:func:`kernel` builds exp(-beta * (1 - A)) (or exp(-beta * A)) with one (N, M) result
and no further (N, M) temporaries, bit for bit the value of the written-out formula.
:func:`row_chunks` bounds the rows of an (N, M) intermediate so that memory does not
grow with N (evaluation and validation go through it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: The most (rows x cache entries) one (N, M) intermediate may hold: 2^25 floats = 128 MB.
CHUNK_ELEMENTS = 1 << 25


def row_chunks(num_entries: int, max_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a (rows, num_entries) tensor holds at most max_elements."""
    return max(1, max_elements // max(1, num_entries))


def chunked(
    fn: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, rows: int
) -> torch.Tensor:
    """``torch.cat([fn(chunk) for chunk in features.split(rows)])``: (N, d) -> (N, C)."""
    if features.shape[0] <= rows:
        return fn(features)
    return torch.cat([fn(chunk) for chunk in features.split(rows)])


def kernel(affinity: torch.Tensor, beta: float, shifted: bool = True) -> torch.Tensor:
    """exp(-beta * (1 - A)) (``shifted``) or exp(-beta * A), (N, M), one allocation.

    Bit-identical to the written-out expression: the same float operations in the same
    order, done in place on the one new tensor (autograd-safe: neither 1 - A nor the
    product by a scalar needs its result for the backward; exp keeps its own output).
    """
    if shifted:
        return torch.rsub(affinity, 1).mul_(-beta).exp_()
    return torch.mul(affinity, -beta).exp_()


class ClassBlocks:
    """Per-class gathers and sums over the M cache entries with labels y (M,).

    ``gather(x)`` is ``x[:, y]`` ((N, C) -> (N, M)) and ``sum(e)`` the per-class sum
    ``sum_{i: y_i = c} e[:, i]`` ((N, M) -> (N, C)). A few-shot cache lists each class's K
    entries together (classes in order of first appearance, as CoOp's sampler draws them):
    then ``block_class`` (C,) holds the class of each block, and both run on an (N, C, K)
    view (a broadcast copy and a reduction over K) instead of a scattered gather and
    ``index_add``; otherwise they index by y. The sums
    agree to float rounding (K terms added in another order).
    """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.labels = labels
        self.num_classes = num_classes
        self.block_class: torch.Tensor | None = None
        m = labels.numel()
        if num_classes and m % num_classes == 0 and m:
            per_block = labels.view(num_classes, m // num_classes)
            first = per_block[:, 0]
            if bool((per_block == first[:, None]).all()) and bool(
                (torch.sort(first).values == torch.arange(num_classes, device=first.device)).all()
            ):
                self.block_class = first
        # blocks already in class order (the usual case): no reordering at all
        self.in_order = self.block_class is not None and bool(
            (self.block_class == torch.arange(num_classes, device=labels.device)).all()
        )

    @property
    def shots(self) -> int:
        return self.labels.numel() // self.num_classes

    def by_block(self, per_class: torch.Tensor, dim: int) -> torch.Tensor:
        """Per-class values along ``dim`` (class c) -> per block (block b holds the class
        of block b), blocked caches only; the inverse of :meth:`in_class_order`."""
        if self.in_order:
            return per_class
        return per_class.index_select(dim, self.block_class)

    def _by_block(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C) -> (N, C, 1), column b = x[:, class of block b] (blocked caches only)."""
        return self.by_block(x, 1)[:, :, None]

    def in_class_order(self, per_block: torch.Tensor, dim: int) -> torch.Tensor:
        """Per-block results along ``dim`` (block b) -> per class (class c), blocked only."""
        if self.in_order:
            return per_block
        return torch.empty_like(per_block).index_copy_(dim, self.block_class, per_block)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C) -> (N, M), column i = x[:, y_i]."""
        if self.block_class is None:
            return x.index_select(1, self.labels)
        n, c = x.shape[0], self.num_classes
        return self._by_block(x).expand(n, c, self.shots).reshape(n, c * self.shots)

    def add_gathered_(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out += x[:, y]`` in place, out (N, M), x (N, C) (no (N, M) temporary when
        blocked: a broadcast add on the (N, C, K) view)."""
        if self.block_class is None:
            return out.add_(x.index_select(1, self.labels))
        out.view(out.shape[0], self.num_classes, self.shots).add_(self._by_block(x))
        return out

    def add_gathered(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out + x[:, y]``, a new (N, M) tensor (out is only read): the same additions as
        :meth:`add_gathered_`."""
        if self.block_class is None:
            return out + x.index_select(1, self.labels)
        n = out.shape[0]
        return (out.view(n, self.num_classes, self.shots) + self._by_block(x)).view(n, -1)

    def mul_gathered_(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out *= x[:, y]`` in place, out (N, M), x (N, C) (no (N, M) temporary when
        blocked)."""
        if self.block_class is None:
            return out.mul_(x.index_select(1, self.labels))
        out.view(out.shape[0], self.num_classes, self.shots).mul_(self._by_block(x))
        return out

    def sum(self, e: torch.Tensor) -> torch.Tensor:
        """e (N, M) -> (N, C), column c = sum of e's columns of class c."""
        if self.block_class is None:
            out = e.new_zeros(e.shape[0], self.num_classes)
            return out.index_add_(1, self.labels, e)
        sums = e.reshape(e.shape[0], self.num_classes, self.shots).sum(-1)
        return self.in_class_order(sums, 1)


class ValueProduct:
    """``e @ values`` for an (M, C) value matrix, as a per-class sum when it can be.

    values (M, C): when every row has at most one nonzero entry, ``index`` (M,) holds
    that entry's class and ``weight`` (M,) its value (None when all are 1, as for one-hot
    labels); otherwise ``dense`` holds the matrix and the product is a matmul.
    """

    def __init__(self, values: torch.Tensor) -> None:
        if values.dim() != 2:
            raise ValueError(f"cache values must be (M, C), got shape {tuple(values.shape)}")
        self.num_classes = values.shape[1]
        nonzero = values != 0
        self.dense: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        if bool((nonzero.sum(1) > 1).any()):
            self.dense = values
            return
        self.index = nonzero.to(torch.uint8).argmax(1)  # a zero row: class 0, weight 0
        weight = values.gather(1, self.index[:, None])[:, 0]
        if not bool((weight == 1).all()):
            self.weight = weight
        self.blocks = ClassBlocks(self.index, self.num_classes)

    @property
    def sparse(self) -> bool:
        """True when the product is a per-class sum (one nonzero per row)."""
        return self.dense is None

    def __call__(self, e: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """e (N, M) -> (N, C). ``inplace``: e may be overwritten (no autograd use)."""
        if self.dense is not None:
            return e @ self.dense
        if self.weight is not None:
            e = e.mul_(self.weight) if inplace else e * self.weight
        return self.blocks.sum(e)


def cache_term(
    affinity: torch.Tensor, beta: float, values: ValueProduct, shifted: bool = True
) -> torch.Tensor:
    """``values(kernel(affinity, beta, shifted))``: the (N, C) cache logits of an (N, M)
    affinity, exp(-beta (1 - A)) @ L (or exp(-beta A) @ L).

    Without autograd the kernel is built and weighted in place. With autograd and a
    per-class-sum ``values`` it is one :class:`_CacheTerm` whose backward is
    ``dA = (+-beta G)[:, y] * (E * w)`` (one in-place product over the saved (N, M) kernel,
    where autograd through the written-out expression makes five passes and allocates
    each); the forward values are bit-identical, the gradient equal to float rounding.
    """
    if not torch.is_grad_enabled():
        return values(kernel(affinity, beta, shifted), inplace=True)
    if not values.sparse or not affinity.requires_grad:
        return values(kernel(affinity, beta, shifted))
    return _CacheTerm.apply(affinity, float(beta), values, shifted)


def stacked_cache_terms(
    affinity: torch.Tensor, betas, values: ValueProduct, shifted: bool = True
) -> torch.Tensor:
    """:func:`cache_term` at several betas at once, without autograd: (n, M) affinity ->
    (B n, C), the rows of beta b at [b n, (b + 1) n).

    One (B, n, M) kernel ``(1 - A) * -beta_b`` then exp, instead of B calls: the same
    float32 operations on the same values (beta rounded to float32 as the scalar is), so
    the rows are bit-identical to ``cache_term(affinity, beta_b, values)``. Dense values (a
    matrix product, whose rounding may depend on its row count) go one beta at a time.
    """
    if not values.sparse:
        return torch.cat([values(kernel(affinity, b, shifted), inplace=True) for b in betas])
    betas = torch.as_tensor(list(betas), dtype=affinity.dtype, device=affinity.device)
    base = torch.rsub(affinity, 1) if shifted else affinity
    e = torch.mul(base, betas.neg().view(-1, 1, 1)).exp_()
    return values(e.view(-1, affinity.shape[-1]), inplace=True)


class _CacheTerm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, affinity, beta: float, values: ValueProduct, shifted: bool):
        e = kernel(affinity, beta, shifted)
        if values.weight is not None:
            e.mul_(values.weight)
        ctx.save_for_backward(e)
        ctx.beta, ctx.values, ctx.shifted = beta, values, shifted
        return values.blocks.sum(e)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (e,) = ctx.saved_tensors
        sign = ctx.beta if ctx.shifted else -ctx.beta  # d/dA of -beta (1 - A) or -beta A
        # dA = (sign G)[:, y] * E, written over E itself (the kernel is needed by nothing
        # else; a second backward through it fails autograd's version check of saved tensors)
        return ctx.values.blocks.mul_gathered_(e, grad * sign), None, None, None
