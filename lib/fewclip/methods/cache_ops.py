"""The arithmetic shared by the key-value cache methods (Tip-Adapter, DualAdapter).

Both methods compute cache logits ``exp(-beta * (1 - f @ K^T)) @ L`` with an (N, M)
kernel and an (M, C) value matrix L whose rows have one nonzero entry: one-hot labels,
or DualAdapter's soft labels (K_c * w_i at the entry's class). The dense product costs
2 N M C flops; with one nonzero per row it is a per-class sum,

    (E @ L)[n, c] = sum_{i: y_i = c} L[i, y_i] * E[n, i]

which :class:`ValueProduct` computes with ``index_add`` in N M operations (2,000x fewer
at ImageNet's C = 1,000). The values agree with the dense product to float rounding (the
dense product adds the same nonzero terms plus exact zeros, in another order); a value
matrix with more than one nonzero in some row falls back to the dense product.

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
        out = e.new_zeros(e.shape[0], self.num_classes)
        return out.index_add_(1, self.index, e)


class ValueProducts:
    """Per-buffer :class:`ValueProduct` s of a module, rebuilt when a buffer changes.

    Keyed by the buffer's storage, in-place version counter and device, so a module moved
    with ``.to`` or a values buffer edited in place is seen.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, ValueProduct]] = {}

    def get(self, name: str, values: torch.Tensor) -> ValueProduct:
        key = (values.data_ptr(), values._version, values.device, tuple(values.shape))
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, ValueProduct(values))
            self._cache[name] = hit
        return hit[1]


class _NormalizedAffinity(torch.autograd.Function):
    """f @ norm(X)^T computed as (f @ X^T) / ||X||, with a hand-written backward."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inv = x.norm(dim=-1).clamp_min(1e-12).reciprocal_()  # (M,) as F.normalize's eps
        out = (f @ x.T).mul_(inv)
        ctx.save_for_backward(f, x, inv, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f, x, inv, out = ctx.saved_tensors
        g = grad * inv  # (N, M)
        grad_f = g @ x if ctx.needs_input_grad[0] else None
        grad_x = None
        if ctx.needs_input_grad[1]:
            # d out_bi / d x_i = f_b / n_i - out_bi x_i / n_i^2
            radial = (g * out).sum(0).mul_(inv)  # (M,)
            grad_x = (g.T @ f).sub_(x * radial[:, None])
        return grad_f, grad_x


def normalized_affinity(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f (N, d) @ norm(x)^T -> (N, M), x (M, d) unnormalised rows (e.g. keys + residuals).

    Equal to ``f @ F.normalize(x, dim=-1).T`` to float rounding, without normalising the
    (M, d) matrix: the norms scale the (N, M) result instead, and the backward is one
    matrix product plus one (M, d) update, where autograd through ``F.normalize`` makes
    several (M, d) passes (at ImageNet's M = 16,000, d = 1,024 they cost more than the
    products when N is a 256-batch).
    """
    return _NormalizedAffinity.apply(f, x)
