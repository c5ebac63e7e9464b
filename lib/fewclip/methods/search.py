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

Speed: candidate pruning (``prune=True``). ``combine`` must be affine in alpha and in lam
separately (true for both cache methods), so the difference of two class logits is too,
and its extremes over the grid's box lie at the box's corners. A class that loses to
another class at all four corners (by a margin far above float rounding) loses everywhere
in the grid and can never be the argmax; only the remaining candidates (usually a few of
C) are combined over the grid, in ascending class order, which keeps the first-maximum
tie-break. A sample whose label is no candidate is wrong at every setting, one whose only
candidate is its label right at every setting; neither is combined. A runtime check at
the box centre disables pruning when ``combine`` is not multilinear.

Speed: alpha intervals (``intervals=True``, with pruning). For one sample and one lam the
logits are affine in alpha, so the alphas where the label is the argmax form an interval
(where its line tops every other class's line): per (sample, lam) the interval's ends are
found from the candidates' lines, and the correct counts of all alphas follow from the
ends, one pass over the classes instead of one per alpha. The lines are computed in
float64 and the decision keeps a margin of float32 rounding: grid alphas within that
margin of an end are evaluated by ``combine`` itself, in the grid's own float32
arithmetic, so the counts are the same integers (:func:`_count_by_intervals`).

Per-call overhead (small val sets, where it dominates): :func:`grid_search_chunked`
stacks the rows of several betas into one :func:`count_correct` call (counts kept per
beta with ``groups``; a method's ``stacked`` components build them in one kernel), and
blocks of at most :data:`FEW_CLASSES` candidate classes test "the label is the first
maximum" by comparisons on class-major logits rather than by ``argmax`` over a short last
axis; rows are grouped by their number of candidates (each group padded to its own power
of two) and the alpha intervals are computed in blocks of rows that stay in the CPU cache
(:data:`LINE_BLOCK_ELEMENTS`). All give the same integer counts.

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


def _corners(values: torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else torch.stack([values.min(), values.max()])


def _shaped(alpha: torch.Tensor, lam: torch.Tensor | None):
    """alpha (A,) and lam (L,) as (A, 1, 1, 1) and (1, L, 1, 1); without lam (A, 1, 1)."""
    if lam is None:
        return alpha.view(-1, 1, 1), None
    return alpha.view(-1, 1, 1, 1), lam.view(1, -1, 1, 1)


def _like(comp: Components, tensors: list[torch.Tensor]) -> Components:
    """tensors as the same kind of tuple as comp (a NamedTuple keeps its fields)."""
    return type(comp)(*tensors) if hasattr(comp, "_fields") else tuple(tensors)


def _block(combine: CombineFn, comp: Components, alpha, lam) -> torch.Tensor:
    """(A, L, N, C) logits for all pairs of alpha (A,) and lam (L,) (L = 1 without lam)."""
    a, m = _shaped(alpha, lam)
    logits = combine(comp, a, m)
    return logits.unsqueeze(1) if lam is None else logits


def rounding_margin(
    comp: Components, alpha: torch.Tensor, lam: torch.Tensor | None, ulps: float = 512
):
    """(N, 1) a bound on the float rounding of any logit ``combine`` computes on a row in
    the grid's box: ``ulps`` units in the last place of ``size (1 + max|alpha|) (1 +
    max|lam|)``, size the sum over the components of the row's largest magnitude (a bound
    on every intermediate value). A combine of a few operations (the cache methods': at
    most 7 per logit, each rounding by half a unit) errs by a few units; the default is
    generous (pruning only needs a bound), :func:`_count_by_intervals` uses 16."""
    a_max = float(alpha.abs().max())
    m_max = 0.0 if lam is None else float(lam.abs().max())
    size = sum(c.abs().amax(-1, keepdim=True) for c in comp)  # (N, 1)
    info = torch.finfo(comp[0].dtype)
    return ulps * info.eps * size * (1 + a_max) * (1 + m_max) + info.tiny


def candidate_mask(
    comp: Components,
    combine: CombineFn,
    alpha: torch.Tensor,
    lam: torch.Tensor | None,
    references: int = 4,
) -> torch.Tensor | None:
    """(N, C) bool: the classes that can be a sample's argmax somewhere in the grid.

    Class c is dropped when some reference class j beats it at every corner of the
    (alpha, lam) box by more than ``4 * margin``: l_c - l_j is multilinear in (alpha,
    lam), so it is then negative everywhere in the box, and float rounding (bounded by
    ``margin``) cannot change that. References: the ``references`` classes with the
    highest mean corner logit. None when ``combine`` fails the multilinearity check at the
    box centre.
    """
    a_c, m_c = _corners(alpha), _corners(lam)
    corner = _block(combine, comp, a_c, m_c).flatten(0, 1)  # (2 or 4, N, C)
    margin = rounding_margin(comp, alpha, lam)
    # Multilinearity check at the centre of the box: the mean of the corner values.
    m_centre = None if m_c is None else m_c.mean().view(1)
    centre = _block(combine, comp, a_c.mean().view(1), m_centre)[0, 0]
    if not torch.all((centre - corner.mean(0)).abs() <= margin):
        return None
    refs = corner.mean(0).topk(min(references, corner.shape[-1]), dim=-1).indices  # (N, r)
    ref_logits = corner.gather(-1, refs.expand(corner.shape[0], -1, -1))  # (n_corners, N, r)
    limit = ref_logits.sub_(4 * margin)
    # beaten by reference j: below its limit at every corner, i.e. the largest excess over
    # the corners is negative (a NaN propagates and counts as not beaten, as a failed
    # comparison would); per reference, so no (n_corners, N, C, r) tensor
    beaten = None
    for j in range(limit.shape[-1]):
        below = torch.sub(corner, limit[..., j : j + 1]).amax(0) < 0
        beaten = below if beaten is None else beaten.logical_or_(below)
    return ~beaten


def candidate_classes(mask: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """(N, k) each row's candidate classes in ascending order (the first-maximum tie-break
    needs it), padded with non-candidates, harmless as they are below the maximum."""
    num_classes = mask.shape[-1]
    k = int(mask.sum(-1).max()) if k is None else k
    order = (~mask).long() * num_classes + torch.arange(num_classes, device=mask.device)
    return order.argsort(-1)[:, :k] % num_classes


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
        part = comp if rows >= n else _like(comp, [t[r0 : r0 + rows] for t in comp])
        part_t = _like(part, [t.T.contiguous() for t in part]) if few else None
        part_labels = labels[r0 : r0 + rows]
        part_groups = groups[r0 : r0 + rows]
        for a0 in range(0, alpha.numel(), alpha_chunk):
            for m0 in range(0, num_lam, lam_chunk):
                m = None if lam is None else lam[m0 : m0 + lam_chunk]
                a = alpha[a0 : a0 + alpha_chunk]
                if few:  # class-major logits: first-maximum test by comparisons
                    logits = _block(combine, part_t, a, m)  # (a, l, c, rows)
                    correct = _label_is_first_max(logits, part_labels)
                else:
                    correct = _block(combine, part, a, m).argmax(-1) == part_labels  # (a, l, rows)
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


def _ranges(lo: torch.Tensor, hi: torch.Tensor, grid: torch.Tensor, closed: bool):
    """Index ranges [start, stop) of the ascending ``grid`` values in the interval from
    ``lo`` to ``hi`` (open: lo < g < hi; closed: lo <= g <= hi)."""
    start = torch.searchsorted(grid, lo.contiguous(), right=not closed)
    stop = torch.searchsorted(grid, hi.contiguous(), right=closed)
    return start, torch.maximum(start, stop)


def _line_bounds(u: torch.Tensor, v: torch.Tensor, threshold: torch.Tensor):
    """The alphas where u + alpha v > threshold for every class (last axis): (lo, hi), lo
    >= hi where there are none. u, v, threshold broadcast to (..., K)."""
    cut = (threshold - u).div_(v)
    lo = cut.masked_fill(v <= 0, -torch.inf).amax(-1)
    hi = cut.masked_fill_(v >= 0, torch.inf).amin(-1)
    never = ((v == 0) & (u <= threshold)).any(-1)
    return lo, hi.masked_fill_(never, -torch.inf)


#: The rounding bound of :func:`_count_by_intervals` in units in the last place (see
#: :func:`rounding_margin`): the label's lead over a class is decided where it exceeds
#: 4 x this bound (twice the bound on the lead's own rounding).
INTERVAL_ULPS = 16
#: Most logits evaluated at once when :func:`_count_by_intervals` checks undecided points.
POINT_BLOCK_ELEMENTS = 1 << 20
#: Most (lams x rows x classes) float64 line coefficients :func:`_alpha_ranges` holds at
#: once (256 KB): its two dozen element-wise passes then stay in the CPU cache instead of
#: streaming (and allocating) megabytes each (3x faster at DualAdapter's 20 lams x 2,000
#: rows x 7 candidates).
LINE_BLOCK_ELEMENTS = 1 << 15


def _alpha_ranges(comp, combine, labels, grid, lam64, margin):
    """For each (lam, row): the grid-index ranges [start, stop) where the label is right
    for certain and [first, last) outside which it is wrong for certain, as (L, R) int64
    tensors, and (L, R) bool ``finite`` (rows with a non-finite value: undecided)."""
    double = _like(comp, [c.double() for c in comp])
    zero, one = (torch.tensor(x, dtype=torch.float64, device=grid.device) for x in (0, 1))
    u = combine(double, zero, lam64)  # (L, R, K); without lam (R, K)
    v = combine(double, one, lam64).sub_(u)
    if lam64 is None:
        u, v = u.unsqueeze(0), v.unsqueeze(0)
    finite = (torch.isfinite(u) & torch.isfinite(v)).all(-1) & torch.isfinite(margin).view(1, -1)
    at_label = labels.view(1, -1, 1).expand(u.shape[0], -1, 1)
    u = u.gather(-1, at_label) - u  # the label's lead over each class
    v = v.gather(-1, at_label) - v
    own = torch.zeros_like(u, dtype=torch.bool).scatter_(-1, at_label, True)
    u.masked_fill_(own, torch.inf)  # the label's own column constrains nothing
    v.masked_fill_(own, 0.0)
    threshold = 4 * margin.double().view(1, -1, 1)  # (1, R, 1)
    sure_lo, sure_hi = _line_bounds(u, v, threshold)
    maybe_lo, maybe_hi = _line_bounds(u, v, -threshold)
    start, stop = _ranges(sure_lo, sure_hi, grid, closed=False)  # right for certain
    first, last = _ranges(maybe_lo, maybe_hi, grid, closed=True)  # outside: wrong for certain
    return start, stop, first, last, finite


def _count_by_intervals(
    comp: Components,
    combine: CombineFn,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    lam: torch.Tensor | None,
    margin: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
) -> torch.Tensor:
    """(G, A, L) correct counts, the same integers as :func:`_count_block`, without
    evaluating every alpha.

    For one row and one lam, ``combine`` is affine in alpha, so the label's lead over
    class c is a line u_c + alpha v_c (its coefficients computed in float64 from
    ``combine`` at alpha 0 and 1). The alphas where every lead exceeds ``4 * margin`` (a
    bound on float32 rounding, see :func:`rounding_margin`) are right for certain, those
    where some lead is below ``-4 * margin`` wrong for certain: two intervals, so each
    row and lam costs one pass over its K classes instead of A. Only the grid alphas
    between the two intervals (near a crossing, usually none) are evaluated, by
    ``combine`` in the grid's float32 arithmetic, and tested as ``argmax`` does (first
    maximum). ``alpha`` must be ascending. The lines are computed in blocks of rows
    (:data:`LINE_BLOCK_ELEMENTS`).
    """
    num_alpha, num_lam = alpha.numel(), 1 if lam is None else lam.numel()
    n, k = comp[0].shape
    lam64 = None if lam is None else lam.double().view(-1, 1, 1)
    grid = alpha.double()
    rows = max(1, LINE_BLOCK_ELEMENTS // (num_lam * k))
    parts = [
        _alpha_ranges(
            _like(comp, [c[r0 : r0 + rows] for c in comp]),
            combine,
            labels[r0 : r0 + rows],
            grid,
            lam64,
            margin[r0 : r0 + rows],
        )
        for r0 in range(0, n, rows)
    ]
    start, stop, first, last, finite = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
    first = torch.where(finite, first, 0)
    last = torch.where(finite, last, num_alpha)
    empty = (start >= stop) | ~finite
    start = torch.where(empty, first, torch.maximum(start, first))
    stop = torch.where(empty, first, torch.minimum(stop, last))

    # certain ranges, as +1 / -1 at their ends summed along alpha
    lam_index = torch.arange(num_lam, device=alpha.device).view(-1, 1).expand_as(start)
    row_group = groups.view(1, -1).expand_as(start)
    edges = torch.zeros(num_groups, num_lam, num_alpha + 1, dtype=torch.long, device=alpha.device)
    ones = torch.ones_like(start)
    edges.index_put_((row_group, lam_index, start), ones, accumulate=True)
    edges.index_put_((row_group, lam_index, stop), -ones, accumulate=True)
    counts = edges.cumsum(-1)[..., :num_alpha].permute(0, 2, 1).contiguous()  # (G, A, L)

    # undecided points: [first, start) and [stop, last), evaluated as the grid does
    begins = torch.cat([first.flatten(), stop.flatten()])
    lengths = torch.cat([(start - first).flatten(), (last - stop).flatten()])
    entry = torch.arange(begins.numel(), device=alpha.device).repeat_interleave(lengths)
    if entry.numel() == 0:
        return counts
    offset = torch.arange(entry.numel(), device=alpha.device) - (
        lengths.cumsum(0) - lengths
    ).repeat_interleave(lengths)
    alpha_index = begins[entry] + offset
    flat = entry % start.numel()  # back to the (L, R) entry
    lam_of, row_of = flat // start.shape[1], flat % start.shape[1]
    step = max(1, POINT_BLOCK_ELEMENTS // k)
    for p0 in range(0, entry.numel(), step):
        r_i, a_i, m_i = (t[p0 : p0 + step] for t in (row_of, alpha_index, lam_of))
        point_lam = None if lam is None else lam[m_i].view(-1, 1)
        point_comp = _like(comp, [c.index_select(0, r_i) for c in comp])
        logits = combine(point_comp, alpha[a_i].view(-1, 1), point_lam)
        right = (logits.argmax(-1) == labels[r_i]).long()
        counts.index_put_((groups[r_i], a_i, m_i), right, accumulate=True)
    return counts


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
    their candidate classes: by :func:`_count_by_intervals` (``intervals=True`` and an
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
        part_comp = _like(comp, [c[part].gather(-1, classes) for c in comp])
        position = (classes == labels[part, None]).long().argmax(-1)  # the label's column
        if by_intervals:
            margin = rounding_margin(part_comp, alpha, lam, ulps=INTERVAL_ULPS)
            counts += _count_by_intervals(
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
                comp = _like(first, [torch.cat(p) for p in zip(*parts, strict=True)])
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
