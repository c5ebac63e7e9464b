"""Hyper-parameter grid search on the validation split, vectorised over (alpha, lam).

The cache methods (Tip-Adapter, DualAdapter) search their blending weights with nested
Python loops in the official code::

    for beta in betas:
        for alpha in alphas:
            for lam in lams:                       # DualAdapter only
                acc = accuracy(forward(val, beta, alpha, lam), labels)
                if acc > best: take (beta, alpha, lam)

DualAdapter's grid is 200 x 40 x 20 = 160,000 forward passes. Here a method exposes its
one forward in two stages:

    components(beta) -> tuple of (N, C) tensors       the parts that depend on beta only
                                                      (text logits, cache terms at beta)
    combine(components, alpha, lam) -> logits         cheap broadcasting arithmetic

and :func:`grid_search` calls ``components`` once per beta and ``combine`` on a whole
(alpha, lam) block at once, with ``alpha`` shaped (A, 1, 1, 1) and ``lam`` (1, L, 1, 1),
giving (A, L, N, C) logits (without ``lam``: (A, 1, 1) and (A, N, C)). The same
``combine`` evaluates one setting when given 0-dim tensors, so the reference loop
:func:`grid_search_loop`, training and evaluation all run the same arithmetic.

Exactly the nested loop's choice: every logit is computed by the same element-wise
operations on the same float values as in the loop (broadcasting does not change an
element-wise result), predictions are ``argmax`` over classes (first maximum), the
comparison uses integer correct counts, and the first maximum in loop order (beta, then
alpha, then lam) wins. The only difference from the official loops is the starting
value: the best count starts at -1, so a grid where every setting scores 0 returns its
first setting instead of the official (0, 0, 0) placeholder.

Speed: with ``prune=True`` (and ``intervals=True``) the counts come from the kernels in
:mod:`fewclip.methods.kernels.search` (candidate pruning, alpha intervals), the same
integers as evaluating every setting (``prune=False``, the plain path).

Memory: a block holds at most ``max_elements`` logits, split over rows (samples) as well
as over (alpha, lam), so that at ImageNet size a block still holds many settings
(:func:`block_shape`). :func:`grid_search_chunked` runs the whole search over chunks of
val (the methods' (rows, M) affinities stay bounded, memory is flat in the val size) and
sums each setting's integer counts over the chunks, so its choice is the unchunked one.

Measurements (``benchmarks/bench_search.py``) are in ``docs/design/dual_adapter_kernels.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from .kernels.search import (
    INTERVAL_ULPS,
    candidate_classes,
    candidate_mask,
    count_by_intervals,
    grid_block,
    like_components,
    rounding_margin,
)

Components = tuple[torch.Tensor, ...]
ComponentsFn = Callable[[float], Components]
CombineFn = Callable[[Components, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


#: The most logits one (alpha, lam, rows, classes) block holds: 2^22 floats = 16 MB.
MAX_BLOCK_ELEMENTS = 1 << 22
#: Most (betas x rows x classes) stacked into one count call by grid_search_chunked (2^18:
#: faster than 2^16 and 2^20 on DualAdapter's search, docs/design/dual_adapter_kernels.md)
BETA_STACK_ELEMENTS = 1 << 18
REFERENCE_SCALE = 100.0  # CLIP's logit scale: the unit of the official grids and constants


def grid_scales(
    logit_scale: float, beta_scale: float | None = None, alpha_scale: float = 1.0
) -> tuple[float, float]:
    """Factors (for beta, for alpha) applied to the official grids and initial values.

    The official values are tuned for CLIP's s = 100. Default: beta x s / 100, alpha x 1.
    A model trained at scale s spreads its cosines over about 1/s (s * delta-cos is what
    its softmax learned to separate), so the kernel sharpness beta in exp(-beta (1 - cos))
    must grow with s to discriminate alike. alpha weighs the cache logits against the text
    logits s * f @ W, whose differences between classes (s * delta-cos) do not depend on s,
    so it keeps its official values. ``beta_scale`` / ``alpha_scale`` override the factors
    (1.0 and 1.0: the official numbers as they are).
    """
    beta = logit_scale / REFERENCE_SCALE if beta_scale is None else beta_scale
    return beta, alpha_scale


def linear_grid(start: float, stop: float, steps: int, scale: float = 1.0) -> list[float]:
    """The official grids: ``[scale * (i * (stop - start) / steps + start) for i < steps]``.

    ``stop`` is excluded (Tip-Adapter's ``search_hp``, DualAdapter's ``beta_list``).
    ``scale`` rescales the whole grid (ranges relative to the backbone's logit scale).
    """
    grid = [i * (stop - start) / steps + start for i in range(steps)]
    return grid if scale == 1.0 else [scale * v for v in grid]


@dataclass(frozen=True)
class SearchResult:
    """The chosen setting, its grid indices and its validation score."""

    beta: float
    alpha: float
    lam: float | None
    index: tuple[int, int, int | None]
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """Validation accuracy in percent at the chosen setting."""
        return 100.0 * self.correct / max(1, self.total)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["accuracy"] = self.accuracy
        return out


def _grid_tensor(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)


def _result(betas, alphas, lams, index, correct, total) -> SearchResult:
    b, a, m = index
    return SearchResult(
        beta=betas[b],
        alpha=alphas[a],
        lam=None if lams is None else lams[m],
        index=(b, a, None if lams is None else m),
        correct=int(correct),
        total=int(total),
    )


def grid_search_loop(
    components: ComponentsFn,
    combine: CombineFn,
    labels: torch.Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    lams: Sequence[float] | None = None,
    *,
    recompute: bool = False,
) -> SearchResult:
    """Reference: the official nested loops, one forward per setting.

    ``recompute=True`` calls ``components(beta)`` inside the innermost loop, as the
    official code recomputes its whole forward; the default computes it once per beta.
    """
    first = components(betas[0])
    alpha_t = _grid_tensor(alphas, first[0])
    lam_t = None if lams is None else _grid_tensor(lams, first[0])
    best, best_index = -1, (0, 0, 0)
    for b, beta in enumerate(betas):
        comp = components(beta)
        for a in range(len(alphas)):
            for m in range(1 if lams is None else len(lams)):
                if recompute:
                    comp = components(beta)
                logits = combine(comp, alpha_t[a], None if lam_t is None else lam_t[m])
                correct = int((logits.argmax(-1) == labels).sum())
                if correct > best:
                    best, best_index = correct, (b, a, m)
    return _result(betas, alphas, lams, best_index, best, labels.numel())


#: Fewest rows per block before the (alpha, lam) pairs of a block are split instead.
MIN_BLOCK_ROWS = 32


def block_shape(n: int, c: int, num_alpha: int, num_lam: int, max_elements: int):
    """(rows, alphas, lams) per block, so that rows * alphas * lams * c <= max_elements
    where it can be: all pairs at once when they fit with at least ``MIN_BLOCK_ROWS`` rows
    (or all n), else fewer alphas, then fewer lams; the rows fill what is left."""
    rows_min = min(n, MIN_BLOCK_ROWS)
    lam_chunk = max(1, min(num_lam, max_elements // (rows_min * c)))
    alpha_chunk = max(1, min(num_alpha, max_elements // (rows_min * lam_chunk * c)))
    rows = max(1, min(n, max_elements // (alpha_chunk * lam_chunk * c)))
    return rows, alpha_chunk, lam_chunk


#: Classes (or candidates) up to which a block's first-maximum test is done by comparisons
#: on class-major logits instead of ``argmax`` over a short last axis (several times faster).
FEW_CLASSES = 8


def _count_block(
    comp: Components,
    combine: CombineFn,
    labels,
    alpha,
    lam,
    max_elements,
    groups: torch.Tensor,
    num_groups: int,
):
    """(G, A, L) correct counts per group of rows (``groups`` (N,) in [0, G)), in blocks of
    at most max_elements logits (see block_shape)."""
    n, c = comp[0].shape
    num_lam = 1 if lam is None else lam.numel()
    rows, alpha_chunk, lam_chunk = block_shape(n, c, alpha.numel(), num_lam, max_elements)
    counts = torch.zeros(alpha.numel(), num_lam, num_groups, dtype=torch.long, device=labels.device)
    # comparisons equal argmax on finite logits only (argmax takes a NaN as the maximum)
    few = c <= FEW_CLASSES and all(bool(torch.isfinite(t).all()) for t in comp)
    for r0 in range(0, n, rows):
        part = comp if rows >= n else like_components(comp, [t[r0 : r0 + rows] for t in comp])
        part_t = like_components(part, [t.T.contiguous() for t in part]) if few else None
        part_labels = labels[r0 : r0 + rows]
        part_groups = groups[r0 : r0 + rows]
        for a0 in range(0, alpha.numel(), alpha_chunk):
            for m0 in range(0, num_lam, lam_chunk):
                m = None if lam is None else lam[m0 : m0 + lam_chunk]
                a = alpha[a0 : a0 + alpha_chunk]
                if few:  # class-major logits: first-maximum test by comparisons
                    logits = grid_block(combine, part_t, a, m)  # (a, l, c, rows)
                    correct = _label_is_first_max(logits, part_labels)
                else:
                    correct = (
                        grid_block(combine, part, a, m).argmax(-1) == part_labels
                    )  # (a, l, rows)
                target = counts[a0 : a0 + alpha_chunk, m0 : m0 + lam_chunk]
                target.index_add_(2, part_groups, correct.long())
    return counts.permute(2, 0, 1)


def _label_is_first_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., C, R) logits, labels (R,) -> (..., R) bool: ``logits.argmax(-2) == labels``.

    ``argmax`` returns the first maximum, so the label is predicted iff no class before it
    scores at least as high and no class after it scores higher.
    """
    index = labels.view(*(1,) * (logits.dim() - 1), -1).expand(*logits.shape[:-2], 1, -1)
    own = logits.gather(-2, index).squeeze(-2)  # (..., R)
    wrong = torch.zeros_like(own, dtype=torch.bool)
    for j in range(logits.shape[-2]):
        other = logits.select(-2, j)
        wrong |= (other > own) | ((other == own) & (labels > j))
    return ~wrong


def count_correct(
    comp: Components,
    combine: CombineFn,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    lam: torch.Tensor | None,
    *,
    max_elements: int = MAX_BLOCK_ELEMENTS,
    prune: bool = True,
    intervals: bool = True,
    groups: torch.Tensor | None = None,
    num_groups: int = 1,
) -> torch.Tensor:
    """(A, L) int64 correct counts for every (alpha, lam) pair at one beta; with ``groups``
    (N,) (rows of several betas stacked, group g = beta g), (G, A, L), one count per group.

    With pruning, a sample whose label is no candidate is wrong everywhere, one whose only
    candidate is its label is right everywhere; only the other samples are combined, over
    their candidate classes: by :func:`count_by_intervals` (``intervals=True`` and an
    ascending alpha grid), else at every (alpha, lam) by :func:`_count_block`. Without
    pruning every setting is evaluated (the reference the tests compare with).
    """
    grouped = groups is not None
    if not grouped:  # one group: every row counts towards the same (A, L)
        groups = torch.zeros_like(labels)
    mask = candidate_mask(comp, combine, alpha, lam) if prune else None
    if mask is None:
        counts = _count_block(comp, combine, labels, alpha, lam, max_elements, groups, num_groups)
        return counts if grouped else counts[0]
    num_candidates = mask.sum(-1)
    label_ok = mask.gather(-1, labels[:, None])[:, 0]
    sure = torch.bincount(groups[label_ok & (num_candidates == 1)], minlength=num_groups)
    rows = (label_ok & (num_candidates > 1)).nonzero()[:, 0]
    num_lam = 1 if lam is None else lam.numel()
    counts = sure.view(-1, 1, 1).expand(-1, alpha.numel(), num_lam).clone()
    by_intervals = intervals and bool((alpha[1:] >= alpha[:-1]).all())
    # rows grouped by their number of candidates, rounded up to a power of two: each group
    # is padded to its own width, not to the widest row's (half the work at DualAdapter's
    # typical 2-7 candidates of 15)
    width = num_candidates[rows].double().log2().ceil().long()  # 2^width >= candidates
    for w in width.unique().tolist():
        part = rows[width == w]
        classes = candidate_classes(mask[part], min(2**w, mask.shape[-1]))  # (R, K)
        part_comp = like_components(comp, [c[part].gather(-1, classes) for c in comp])
        position = (classes == labels[part, None]).long().argmax(-1)  # the label's column
        if by_intervals:
            margin = rounding_margin(part_comp, alpha, lam, ulps=INTERVAL_ULPS)
            counts += count_by_intervals(
                part_comp, combine, position, alpha, lam, margin, groups[part], num_groups
            )
        else:
            counts += _count_block(
                part_comp, combine, position, alpha, lam, max_elements, groups[part], num_groups
            )
    return counts if grouped else counts[0]


def grid_search(
    components: ComponentsFn,
    combine: CombineFn,
    labels: torch.Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    lams: Sequence[float] | None = None,
    *,
    max_elements: int = MAX_BLOCK_ELEMENTS,
    prune: bool = True,
    intervals: bool = True,
) -> SearchResult:
    """The setting :func:`grid_search_loop` picks, computed in blocks (see the module doc).

    components(beta) -> (N, C) tensors; combine(components, alpha, lam) -> logits,
    broadcasting over leading grid axes; labels (N,). Returns a :class:`SearchResult`.
    """
    counts = None
    for b, beta in enumerate(betas):
        c = _counts_stacked(
            components(beta), 1, combine, labels, alphas, lams, max_elements, prune, intervals
        )
        counts = c.new_zeros(len(betas), *c.shape[1:]) if counts is None else counts
        counts[b] = c[0]
    return _choose(counts, betas, alphas, lams, labels.numel())


def grid_search_chunked(
    terms: Callable[[torch.Tensor], object],
    components: Callable[[object, float], Components],
    combine: CombineFn,
    features: torch.Tensor,
    labels: torch.Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    lams: Sequence[float] | None = None,
    *,
    rows: int,
    max_elements: int = MAX_BLOCK_ELEMENTS,
    prune: bool = True,
    intervals: bool = True,
    stacked: Callable[[object, Sequence[float]], Components] | None = None,
) -> SearchResult:
    """:func:`grid_search` over ``features`` (N, d) in chunks of ``rows``: memory flat in N.

    ``terms(chunk)`` computes a chunk's beta-free parts once, ``components(terms, beta)``
    its (rows, C) tensors at each beta; each setting's correct count is the sum of the
    chunks' counts (integers), so the choice is the unchunked one. ``stacked(terms,
    betas)``, where a method has it, returns the components of several betas at once,
    stacked along the rows (beta-major), equal to those of ``components``: one call per
    group of betas instead of one per beta.
    """
    counts = None
    for start in range(0, features.shape[0], rows):
        chunk_terms = terms(features[start : start + rows])
        chunk_labels = labels[start : start + rows]
        first = components(chunk_terms, betas[0])
        # betas stacked per call, their (n, C) rows in one block (fewer, larger operations)
        size = chunk_labels.numel() * first[0].shape[-1]
        per_call = max(1, min(len(betas), BETA_STACK_ELEMENTS // max(1, size)))
        for b0 in range(0, len(betas), per_call):
            batch = betas[b0 : b0 + per_call]
            if stacked is not None:
                comp = stacked(chunk_terms, batch)
            else:
                parts = [
                    first if b0 + i == 0 else components(chunk_terms, beta)
                    for i, beta in enumerate(batch)
                ]
                comp = like_components(first, [torch.cat(p) for p in zip(*parts, strict=True)])
            c = _counts_stacked(
                comp,
                len(batch),
                combine,
                chunk_labels,
                alphas,
                lams,
                max_elements,
                prune,
                intervals,
            )
            counts = c.new_zeros(len(betas), *c.shape[1:]) if counts is None else counts
            counts[b0 : b0 + len(batch)] += c
        del chunk_terms
    return _choose(counts, betas, alphas, lams, labels.numel())


def _counts_stacked(
    stacked, num_betas, combine, labels, alphas, lams, max_elements, prune, intervals
) -> torch.Tensor:
    """(B, A, L) correct counts for B betas' components stacked along the rows (beta-major)
    in one call (fewer, larger tensor operations; the counts are integers, so the same)."""
    n = labels.numel()
    groups = torch.arange(num_betas, device=labels.device).repeat_interleave(n)
    alpha_t = _grid_tensor(alphas, stacked[0])
    lam_t = None if lams is None else _grid_tensor(lams, stacked[0])
    return count_correct(
        stacked,
        combine,
        labels.repeat(num_betas),
        alpha_t,
        lam_t,
        max_elements=max_elements,
        prune=prune,
        intervals=intervals,
        groups=groups,
        num_groups=num_betas,
    )


def _choose(counts: torch.Tensor, betas, alphas, lams, total: int) -> SearchResult:
    """The first maximum of (B, A, L) counts in loop order (beta, then alpha, then lam)."""
    flat = int(counts.flatten().argmax())  # torch returns the first maximal index
    b, rest = divmod(flat, counts.shape[1] * counts.shape[2])
    a, m = divmod(rest, counts.shape[2])
    return _result(betas, alphas, lams, (b, a, m), int(counts.flatten()[flat]), total)
