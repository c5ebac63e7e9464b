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
