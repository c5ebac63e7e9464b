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


class ClassBlocks:
    """Per-class gathers and sums over the M cache entries with labels y (M,).

    ``gather(x)`` is ``x[:, y]`` ((N, C) -> (N, M)) and ``sum(e)`` the per-class sum
    ``sum_{i: y_i = c} e[:, i]`` ((N, M) -> (N, C)). A few-shot cache lists each class's K
    entries together (classes in order of first appearance, as CoOp's sampler draws them):
    then ``block_class`` (C,) holds the class of each block, and both run on an (N, C, K)
    view (a broadcast copy and a reduction over K) instead of a scattered gather and
    ``index_add``, several times faster at M = 16,000; otherwise they index by y. The sums
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


def tensor_key(t: torch.Tensor) -> tuple:
    """What identifies a tensor's current values without reading them: its memory address,
    in-place version counter, device, shape, strides and dtype."""
    return (t.data_ptr(), t._version, t.device, tuple(t.shape), t.stride(), t.dtype)


class BufferDerived:
    """Objects derived from a module's buffers (``build(*tensors, **extra)``), rebuilt when a
    buffer changes: keyed by :func:`tensor_key` of each tensor, so a module moved with
    ``.to`` or a buffer edited in place is seen."""

    def __init__(self, build: Callable) -> None:
        self._build = build
        self._cache: dict[str, tuple[tuple, object]] = {}

    def get(self, name: str, *tensors: torch.Tensor, **extra):
        key = tuple(tensor_key(t) for t in tensors) + tuple(sorted(extra.items()))
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, self._build(*tensors, **extra))
            self._cache[name] = hit
        return hit[1]


class TensorMemo:
    """Values computed from tensors, kept while those tensors are unchanged: matched by
    :func:`tensor_key`, with a reference to the tensors held, so that their memory cannot be
    reused by another tensor while the value is kept; at most ``capacity`` values (the
    oldest is dropped)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._kept: dict[tuple, tuple[tuple[torch.Tensor, ...], object]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, tensors: tuple[torch.Tensor, ...], build: Callable[[], object]):
        key = tuple(tensor_key(t) for t in tensors)
        kept = self._kept.get(key)
        if kept is None:
            kept = (tensors, build())
            if len(self._kept) >= self.capacity:
                self._kept.pop(next(iter(self._kept)))  # the oldest
            self._kept[key] = kept
        return kept[1]


class ValueProducts(BufferDerived):
    """Per-buffer :class:`ValueProduct` s of a module (``get(name, values)``)."""

    def __init__(self) -> None:
        super().__init__(ValueProduct)


class KeptProduct:
    """``f @ keys.T`` (N, M), kept for the last ``f`` seen without autograd while neither
    tensor changes (:class:`TensorMemo`): the per-epoch validation multiplies the same val
    features with the same frozen cache keys at every epoch (30 times in a DualAdapter fit).

    Returns a new tensor each call (callers build in its memory). Only products of at most
    ``max_elements`` entries are kept (a few-shot val set; large val sets are evaluated in
    chunks, new tensors each time).
    """

    def __init__(self, max_elements: int = 1 << 20) -> None:
        self.max_elements = max_elements
        self.memo = TensorMemo(capacity=1)

    def __call__(self, f: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or f.shape[0] * keys.shape[0] > self.max_elements:
            return f.detach() @ keys.T
        return self.memo.get((f, keys), lambda: f @ keys.T).clone()


class ResidualKeys:
    """Frozen cache keys F (M, d) with labels y (M,) and a per-class residual R (C, d):
    the affinity ``f @ norm(F + R[y])^T`` without ever forming the (M, d) matrix F + R[y].

    Since F is frozen, the adapted keys' products split into
    ``f @ F^T + (f @ R^T)[:, y]`` (one (N, M) product with the frozen keys and an (N, C)
    one with the residuals), and their squared norms into
    ``||F_i||^2 + 2 F_i . R_{y_i} + ||R_{y_i}||^2``. The backward needs no (M, d) product
    either: R's gradient is ``(G~ summed per class)^T @ f`` minus a per-class sum of
    ``w_i (F_i + R_c)`` (see :class:`_ResidualAffinity`). Per step this removes the (M, d)
    gather, add and normalisation of DualAdapter's keys and the (M, N) x (N, d) key-gradient
    product, all of which cost more than the affinity at ImageNet's M = 16,000.

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
        view. On CPU torch's bmm runs that form 5-15x faster than the same products written
        (K, d) x (d, 1) (one thread: 3.9 ms against 21.7 ms at C = 1,000, K = 16, d = 1,024;
        8 us against 69 us at C = 15, K = 16, d = 256); equal to float rounding.
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

        ``frozen`` (N, M): ``f @ F^T`` when the caller has it (it is overwritten: the
        affinity is built in its memory); else computed here. ``f_residual`` (N, C):
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
        # f F^T + (f R^T)[:, y] in one (N, M) allocation (the caller's f F^T, when given)
        frozen = f @ rk.keys.T if frozen is None else frozen
        out = rk.classes.add_gathered_(frozen, f_residual).mul_(inv)
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
