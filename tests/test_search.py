"""The vectorised grid search picks exactly what the official nested loop picks."""

from __future__ import annotations

import pytest
import torch

from fewclip.methods.kernels.search import candidate_classes, candidate_mask
from fewclip.methods.search import (
    MIN_BLOCK_ROWS,
    block_shape,
    count_correct,
    grid_search,
    grid_search_chunked,
    grid_search_loop,
    linear_grid,
)


def dual_combine(c, alpha, lam):
    pos = c[0] + alpha * c[1]
    neg = c[2] + alpha * c[3]
    return lam * pos + (1 - lam) * neg


def tip_combine(c, alpha, lam=None):
    return c[0] + alpha * c[1]


def random_components(n=60, c=12, seed=0, structured=True, signal=1.0):
    """Components whose beta-dependence is like a cache: text + beta-scaled cache terms."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, c).float()
    base = [torch.randn(n, c, generator=g) for _ in range(4)]
    if structured:  # informative towards the label, so that pruning has work to do
        base = [b + signal * s * onehot for b, s in zip(base, (3.0, 2.0, 1.0, 0.5), strict=True)]

    def components(beta: float):
        return (base[0], base[1] * (1 + beta), base[2], torch.exp(-beta * base[3].abs()))

    return components, labels


def test_linear_grid_is_the_official_formula():
    # Tip-Adapter search_hp with search_scale 7, search_step 200
    betas = linear_grid(0.1, 7, 200)
    assert betas == [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    assert betas[0] == 0.1 and betas[-1] < 7
    assert linear_grid(0.6, 1.0, 20)[-1] == pytest.approx(0.98)
    assert linear_grid(0, 4, 4, scale=0.5) == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("structured", [True, False])
def test_vectorised_equals_nested_loop(seed, structured):
    components, labels = random_components(seed=seed, structured=structured)
    grids = (linear_grid(0, 3, 5), linear_grid(0, 4, 9), linear_grid(0.3, 1.0, 7))
    reference = grid_search_loop(components, dual_combine, labels, *grids)
    assert grid_search(components, dual_combine, labels, *grids) == reference
    assert grid_search(components, dual_combine, labels, *grids, prune=False) == reference
    assert grid_search(components, dual_combine, labels, *grids, max_elements=100) == reference


def test_without_lam_axis():
    components, labels = random_components(seed=7)
    grids = (linear_grid(0.1, 3, 6), linear_grid(0.1, 5, 11))
    reference = grid_search_loop(components, tip_combine, labels, *grids)
    found = grid_search(components, tip_combine, labels, *grids)
    assert found == reference and found.lam is None and found.index[2] is None


def test_planted_ties_first_in_loop_order():
    """Integer components and dyadic grids give exact ties between classes and settings."""
    g = torch.Generator().manual_seed(3)
    n, c = 40, 6
    labels = torch.randint(0, c, (n,), generator=g)
    base = [torch.randint(-2, 3, (n, c), generator=g).float() for _ in range(4)]
    base[0][:, 1] = base[0][:, 0]  # classes 0 and 1 tie in the text term
    components = lambda beta: (base[0], base[1], base[2], base[3] * beta)
    betas, alphas, lams = [0.0, 1.0, 1.0, 2.0], [0.0, 0.5, 0.5, 1.0], [0.5, 0.75, 1.0, 1.0]
    reference = grid_search_loop(components, dual_combine, labels, betas, alphas, lams)
    assert grid_search(components, dual_combine, labels, betas, alphas, lams) == reference
    # repeated grid values can never win at their second occurrence
    b, a, m = reference.index
    assert b != 2 and a != 2 and m != 3

    # every setting scores the same: the very first one is chosen (the loop's ">")
    flat = lambda beta: (base[0], 0 * base[1], base[0], 0 * base[1])
    tied = grid_search(flat, dual_combine, labels, betas, alphas, lams)
    assert tied.index == (0, 0, 0)
    assert tied == grid_search_loop(flat, dual_combine, labels, betas, alphas, lams)


def test_class_ties_break_to_the_first_class():
    labels = torch.tensor([1, 0])
    text = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # classes 0 and 1 tie
    zero = torch.zeros_like(text)
    components = lambda beta: (text, zero, text, zero)
    counts = count_correct(
        components(0.0), dual_combine, labels, torch.tensor([0.0, 1.0]), torch.tensor([0.5])
    )
    assert counts.tolist() == [[1], [1]]  # argmax picks class 0 for both samples


def test_class_ties_with_pruning_active():
    """Two identical classes tie everywhere; pruning must keep the lower one first."""
    components, labels = random_components(n=80, c=40, seed=5, signal=2.0)

    def duplicated(beta: float):
        comp = [c.clone() for c in components(beta)]
        for c in comp:
            c[:, 1] = c[:, 0]
        return tuple(comp)

    labels = labels.clone()
    labels[labels == 0] = 1  # only the tie-break decides whether these are correct
    alphas, lams = linear_grid(0, 4, 9), linear_grid(0.3, 1.0, 7)
    comp = duplicated(1.0)
    a_t, m_t = torch.tensor(alphas), torch.tensor(lams)
    mask = candidate_mask(comp, dual_combine, a_t, m_t)
    assert mask is not None and (mask[:, 0] & mask[:, 1] & (labels == 1)).any()
    pruned = count_correct(comp, dual_combine, labels, a_t, m_t)
    assert torch.equal(pruned, count_correct(comp, dual_combine, labels, a_t, m_t, prune=False))
    grids = ([0.5, 1.0, 2.0], alphas, lams)
    assert grid_search(duplicated, dual_combine, labels, *grids) == grid_search_loop(
        duplicated, dual_combine, labels, *grids
    )


def test_nothing_correct_returns_the_first_setting():
    labels = torch.tensor([2, 2])
    text = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    zero = torch.zeros_like(text)
    found = grid_search(lambda b: (text, zero), tip_combine, labels, [0.5, 1.0], [1.0, 2.0])
    assert found.correct == 0 and found.index == (0, 0, None) and found.beta == 0.5


def test_recompute_loop_is_the_same():
    components, labels = random_components(seed=11)
    grids = (linear_grid(0, 2, 3), linear_grid(0, 2, 4), linear_grid(0.5, 1.0, 3))
    assert grid_search_loop(components, dual_combine, labels, *grids, recompute=True) == (
        grid_search_loop(components, dual_combine, labels, *grids)
    )


def test_pruning_keeps_every_possible_winner():
    components, labels = random_components(n=80, c=40, seed=5, signal=2.0)
    alphas, lams = torch.tensor(linear_grid(0, 4, 9)), torch.tensor(linear_grid(0.3, 1.0, 7))
    comp = components(1.0)
    mask = candidate_mask(comp, dual_combine, alphas, lams)
    assert mask is not None and 1 < mask.sum(1).max() < 10  # pruning helps on this data
    winners = dual_combine(comp, alphas.view(-1, 1, 1, 1), lams.view(1, -1, 1, 1)).argmax(-1)
    assert mask.gather(1, winners.flatten(0, 1).T).all()
    # the true winner at each grid point is the first maximum among the kept classes
    classes = candidate_classes(mask)
    kept_logits = dual_combine(
        tuple(c.gather(1, classes) for c in comp), alphas.view(-1, 1, 1, 1), lams.view(1, -1, 1, 1)
    )
    assert torch.equal(
        classes.expand(*winners.shape, -1).gather(-1, kept_logits.argmax(-1, keepdim=True))[..., 0],
        winners,
    )
    # samples right everywhere, wrong everywhere (mislabelled) and contested all occur
    labels = labels.clone()
    labels[:8] = (labels[:8] + 20) % 40
    single = mask.sum(1) == 1
    label_kept = mask.gather(1, labels[:, None])[:, 0]
    assert (single & label_kept).any() and (~label_kept).any() and (~single & label_kept).any()
    assert torch.equal(
        count_correct(comp, dual_combine, labels, alphas, lams),
        count_correct(comp, dual_combine, labels, alphas, lams, prune=False),
    )


def test_non_multilinear_combine_disables_pruning():
    components, labels = random_components(seed=2)
    squared = lambda c, alpha, lam: c[0] + alpha * alpha * c[1] + lam * c[2]
    alphas, lams = torch.tensor(linear_grid(0, 4, 9)), torch.tensor(linear_grid(0.3, 1.0, 7))
    assert candidate_mask(components(1.0), squared, alphas, lams) is None
    grids = (linear_grid(0, 2, 3), linear_grid(0, 4, 9), linear_grid(0.3, 1.0, 7))
    assert grid_search(components, squared, labels, *grids) == grid_search_loop(
        components, squared, labels, *grids
    )


def test_result_reports_accuracy():
    components, labels = random_components(seed=1)
    found = grid_search(components, tip_combine, labels, [1.0], [0.0, 1.0])
    assert found.total == labels.numel()
    assert found.accuracy == pytest.approx(100 * found.correct / found.total)
    assert found.as_dict()["accuracy"] == found.accuracy


@pytest.mark.parametrize("rows", [1, 7, 60, 1000])
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("stack", [1, 2000, None])  # betas per count call: 1, 2 or all
def test_chunked_over_samples_equals_the_loop(rows, prune, stack, monkeypatch):
    """Searching val in chunks (counts summed over chunks) and betas in groups picks the
    loop's setting."""
    from fewclip.methods import search

    if stack is not None:
        monkeypatch.setattr(search, "BETA_STACK_ELEMENTS", stack)
    components, labels = random_components(n=60, seed=4)
    index = torch.arange(labels.numel())[:, None].float()  # "features": row indices

    def chunk_components(rows_idx, beta):
        i = rows_idx[:, 0].long()
        return tuple(c[i] for c in components(beta))

    grids = (linear_grid(0, 3, 5), linear_grid(0, 4, 9), linear_grid(0.3, 1.0, 7))
    reference = grid_search_loop(components, dual_combine, labels, *grids)
    found = grid_search_chunked(
        lambda f: f, chunk_components, dual_combine, index, labels, *grids, rows=rows, prune=prune
    )
    assert found == reference


def test_blocks_hold_many_settings_at_imagenet_size():
    """At N = 4,000 val images and C = 1,000, a block is not one (alpha, lam) pair."""
    rows, alphas, lams = block_shape(4000, 1000, 40, 20, 1 << 22)
    assert lams == 20 and alphas > 1 and rows >= MIN_BLOCK_ROWS
    assert rows * alphas * lams * 1000 <= 1 << 22
    assert block_shape(50, 3, 40, 20, 1 << 22) == (50, 40, 20)  # small: one block
    assert block_shape(10, 10**6, 4, 3, 1000) == (1, 1, 1)  # never zero


@pytest.mark.parametrize("max_elements", [50, 700, 5000])
def test_row_blocks_give_the_same_counts(max_elements):
    components, labels = random_components(n=70, c=12, seed=9)
    comp = components(1.3)
    alphas, lams = torch.tensor(linear_grid(0, 4, 9)), torch.tensor(linear_grid(0.3, 1.0, 7))
    whole = count_correct(comp, dual_combine, labels, alphas, lams, prune=False)
    blocked = count_correct(
        comp, dual_combine, labels, alphas, lams, prune=False, max_elements=max_elements
    )
    assert torch.equal(whole, blocked)


@pytest.mark.parametrize("classes", [1, 2, 5, 8])
def test_first_maximum_by_comparisons_equals_argmax(classes):
    from fewclip.methods.search import _label_is_first_max

    g = torch.Generator().manual_seed(classes)
    logits = torch.randint(0, 3, (4, 3, classes, 50), generator=g).float()  # many ties
    labels = torch.randint(0, classes, (50,), generator=g)
    expected = logits.argmax(-2) == labels
    assert torch.equal(_label_is_first_max(logits, labels), expected)
    assert 0 < int(expected.sum()) < expected.numel() or classes == 1


def near_tie_components(n=200, seed=0):
    """Class 1 equals the label (class 0) in the text terms and within 1e-7 in the cache
    terms: the label's lead over class 1 stays within float32 rounding of zero."""
    g = torch.Generator().manual_seed(seed)
    comp = [torch.randn(n, 3, generator=g) for _ in range(4)]
    for k in (0, 2):
        comp[k][:, 1] = comp[k][:, 0]
    for k in (1, 3):
        comp[k][:, 1] = comp[k][:, 0] + 1e-7 * torch.randn(n, generator=g)
    return tuple(comp), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("seed", range(3))
def test_intervals_count_exactly_what_every_alpha_counts(seed):
    """The interval count equals the full evaluation of every (alpha, lam) on rows whose
    lead is within rounding of zero; without its rounding margin it does not."""
    from fewclip.methods.kernels.search import (
        INTERVAL_ULPS,
        count_by_intervals,
        rounding_margin,
    )
    from fewclip.methods.search import _count_block

    comp, labels = near_tie_components(seed=seed)
    alphas, lams = torch.tensor(linear_grid(0, 7, 40)), torch.tensor(linear_grid(0.6, 1.0, 20))
    groups = torch.zeros_like(labels)
    full = _count_block(comp, dual_combine, labels, alphas, lams, 1 << 22, groups, 1)
    assert 0 < int(full.sum()) < full.numel() * labels.numel()

    def by_intervals(ulps):
        margin = rounding_margin(comp, alphas, lams, ulps=ulps)
        return count_by_intervals(comp, dual_combine, labels, alphas, lams, margin, groups, 1)

    assert torch.equal(by_intervals(INTERVAL_ULPS), full)
    assert not torch.equal(by_intervals(0), full)  # the float64 lines alone misjudge ties


def test_intervals_switch_and_unsorted_alphas_give_the_same_counts():
    components, labels = random_components(n=90, c=20, seed=8, signal=2.0)
    comp = components(0.7)
    lams = torch.tensor(linear_grid(0.3, 1.0, 7))
    for alphas in (torch.tensor(linear_grid(0, 4, 9)), torch.tensor([2.0, 0.0, 3.5, 1.0])):
        reference = count_correct(comp, dual_combine, labels, alphas, lams, prune=False)
        for intervals in (True, False):
            counts = count_correct(comp, dual_combine, labels, alphas, lams, intervals=intervals)
            assert torch.equal(counts, reference)
    alphas = torch.tensor(linear_grid(0, 4, 9))
    without_lam = count_correct(comp, tip_combine, labels, alphas, None)
    assert torch.equal(
        without_lam, count_correct(comp, tip_combine, labels, alphas, None, prune=False)
    )


def test_intervals_with_non_finite_rows_count_as_the_grid_does():
    """A NaN or inf in a row's components leaves that row to the exact evaluation."""
    from fewclip.methods.kernels.search import (
        INTERVAL_ULPS,
        count_by_intervals,
        rounding_margin,
    )
    from fewclip.methods.search import _count_block

    components, labels = random_components(n=40, c=5, seed=3)
    comp = tuple(c.clone() for c in components(1.0))
    comp[1][3, (labels[3] + 1) % 5] = float("nan")  # a wrong class wins wherever alpha > 0
    comp[3][7, (labels[7] + 2) % 5] = float("inf")  # NaN at alpha = 0 (0 * inf), inf beyond
    comp[0][11, (labels[11] + 3) % 5] = float("-inf")  # a class that never wins
    alphas, lams = torch.tensor(linear_grid(0, 4, 9)), torch.tensor(linear_grid(0.3, 1.0, 7))
    groups = torch.zeros_like(labels)
    margin = rounding_margin(comp, alphas, lams, ulps=INTERVAL_ULPS)
    logits = dual_combine(comp, alphas.view(-1, 1, 1, 1), lams.view(1, -1, 1, 1))
    argmax_counts = (logits.argmax(-1) == labels).sum(-1)  # (A, L), the loop's test
    intervals = count_by_intervals(comp, dual_combine, labels, alphas, lams, margin, groups, 1)
    assert torch.equal(intervals[0], argmax_counts)
    block = _count_block(comp, dual_combine, labels, alphas, lams, 1 << 22, groups, 1)
    assert torch.equal(block[0], argmax_counts)  # few classes, compared without argmax
