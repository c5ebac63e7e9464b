"""The search's fast kernels: candidate pruning and alpha intervals.

:func:`fewclip.methods.search.count_correct` counts the correct val predictions of every
(alpha, lam) setting at one beta. Evaluating every setting (``prune=False``) is the plain
path; with ``prune=True`` it uses the kernels below, which give the same integer counts
(``tests/test_search.py``: ``test_intervals_count_exactly_what_every_alpha_counts``,
``test_intervals_switch_and_unsorted_alphas_give_the_same_counts``, and the pruned search
against the official loop throughout that file).

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
arithmetic, so the counts are the same integers (:func:`count_by_intervals`).

Per-call overhead (small val sets, where it dominates):
:func:`fewclip.methods.search.grid_search_chunked` stacks the rows of several betas into
one ``count_correct`` call (counts kept per beta with ``groups``; a method's ``stacked``
components build them in one kernel), and blocks of at most
:data:`fewclip.methods.search.FEW_CLASSES` candidate classes test "the label is the first
maximum" by comparisons on class-major logits rather than by ``argmax`` over a short last
axis; rows are grouped by their number of candidates (each group padded to its own power
of two) and the alpha intervals are computed in blocks of rows that stay in the CPU cache
(:data:`LINE_BLOCK_ELEMENTS`). All give the same integer counts.

Which of these earn their place, with measurements: ``docs/design/dual_adapter_kernels.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Components = tuple[torch.Tensor, ...]
CombineFn = Callable[[Components, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _corners(values: torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else torch.stack([values.min(), values.max()])


def _shaped(alpha: torch.Tensor, lam: torch.Tensor | None):
    """alpha (A,) and lam (L,) as (A, 1, 1, 1) and (1, L, 1, 1); without lam (A, 1, 1)."""
    if lam is None:
        return alpha.view(-1, 1, 1), None
    return alpha.view(-1, 1, 1, 1), lam.view(1, -1, 1, 1)


def like_components(comp: Components, tensors: list[torch.Tensor]) -> Components:
    """tensors as the same kind of tuple as comp (a NamedTuple keeps its fields)."""
    return type(comp)(*tensors) if hasattr(comp, "_fields") else tuple(tensors)


def grid_block(combine: CombineFn, comp: Components, alpha, lam) -> torch.Tensor:
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
    generous (pruning only needs a bound), :func:`count_by_intervals` uses 16."""
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
    corner = grid_block(combine, comp, a_c, m_c).flatten(0, 1)  # (2 or 4, N, C)
    margin = rounding_margin(comp, alpha, lam)
    # Multilinearity check at the centre of the box: the mean of the corner values.
    m_centre = None if m_c is None else m_c.mean().view(1)
    centre = grid_block(combine, comp, a_c.mean().view(1), m_centre)[0, 0]
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


#: The rounding bound of :func:`count_by_intervals` in units in the last place (see
#: :func:`rounding_margin`): the label's lead over a class is decided where it exceeds
#: 4 x this bound (twice the bound on the lead's own rounding).
INTERVAL_ULPS = 16
#: Most logits evaluated at once when :func:`count_by_intervals` checks undecided points.
POINT_BLOCK_ELEMENTS = 1 << 20
#: Most (lams x rows x classes) float64 line coefficients :func:`_alpha_ranges` holds at
#: once (256 KB): its two dozen element-wise passes then stay in the CPU cache instead of
#: streaming (and allocating) megabytes each.
LINE_BLOCK_ELEMENTS = 1 << 15


def _alpha_ranges(comp, combine, labels, grid, lam64, margin):
    """For each (lam, row): the grid-index ranges [start, stop) where the label is right
    for certain and [first, last) outside which it is wrong for certain, as (L, R) int64
    tensors, and (L, R) bool ``finite`` (rows with a non-finite value: undecided)."""
    double = like_components(comp, [c.double() for c in comp])
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


def count_by_intervals(
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
            like_components(comp, [c[r0 : r0 + rows] for c in comp]),
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
        point_comp = like_components(comp, [c.index_select(0, r_i) for c in comp])
        logits = combine(point_comp, alpha[a_i].view(-1, 1), point_lam)
        right = (logits.argmax(-1) == labels[r_i]).long()
        counts.index_put_((groups[r_i], a_i, m_i), right, accumulate=True)
    return counts
