"""The cache methods' per-class sums equal the dense value products they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_feature_data

from fewclip.methods.dual_adapter import DualAdapter, DualCache
from fewclip.methods.kernels.cache import (
    ClassBlocks,
    ValueProduct,
    cache_term,
    chunked,
    kernel,
    row_chunks,
    stacked_cache_terms,
)
from fewclip.methods.kernels.residual_keys import ResidualKeys
from fewclip.methods.search import grid_search, linear_grid
from fewclip.methods.tip_adapter import TipAdapter, TipCache


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().amax(-1, keepdim=True).clamp(min=1e-30)).max())


@pytest.mark.parametrize("beta", [0.0, 0.37, 5.5, 13.1])
def test_kernel_is_bit_identical_to_the_formula(beta):
    a = torch.rand(40, 130, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(kernel(a, beta), torch.exp(-beta * (1 - a)))
    assert torch.equal(kernel(a, beta, shifted=False), torch.exp(-beta * a))


def values_cases(m=90, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (m,), generator=g)
    onehot = F.one_hot(labels, c).float()
    soft = onehot * (torch.rand(m, 1, generator=g) * 3)  # one nonzero per row, not one
    zero_rows = soft.clone()
    zero_rows[::5] = 0
    dense = torch.rand(m, c, generator=g)  # many nonzeros per row: the dense fallback
    # each class's entries together, as a few-shot cache lists them (9 classes x 10)
    blocked_labels = torch.randperm(9, generator=g).repeat_interleave(m // 9)
    blocked = F.one_hot(blocked_labels, 9).float() * (torch.rand(m, 1, generator=g) + 0.5)
    return {
        "onehot": onehot,
        "soft": soft,
        "zero_rows": zero_rows,
        "dense": dense,
        "blocked": blocked,
    }


@pytest.mark.parametrize("case", ["onehot", "soft", "zero_rows", "dense", "blocked"])
def test_value_product_equals_the_dense_product(case):
    values = values_cases()[case]
    e = kernel(torch.rand(33, 90, generator=torch.Generator().manual_seed(2)), 4.0)
    product = ValueProduct(values)
    assert product.sparse == (case != "dense")
    if product.sparse:
        assert (product.weight is None) == (case == "onehot")
        assert (product.blocks.block_class is not None) == (case == "blocked")
    assert rel_err(product(e), e @ values) < 1e-6
    assert rel_err(product(e.clone(), inplace=True), e @ values) < 1e-6


def test_value_product_gradients_equal_the_dense_ones():
    values = values_cases()["soft"]
    a = (torch.rand(20, 90, generator=torch.Generator().manual_seed(3)) * 2 - 1).requires_grad_()
    g = torch.randn(20, 7, generator=torch.Generator().manual_seed(4))
    (ValueProduct(values)(kernel(a, 3.0)) * g).sum().backward()
    ours, a.grad = a.grad.clone(), None
    (torch.exp(-3.0 * (1 - a)) @ values * g).sum().backward()
    assert rel_err(ours, a.grad) < 1e-6


def test_chunks_bound_the_rows():
    assert row_chunks(16_000, 1 << 25) == 2097
    assert row_chunks(10**9, 100) == 1
    f = torch.randn(10, 3)
    assert torch.equal(chunked(lambda x: x * 2, f, 3), f * 2)


# -- the methods' components against the dense one-hot products they replace --------------


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_data(num_classes=9, shots=5, dim=32, seed=3)[0]


def trained_dual(data) -> DualAdapter:
    """A DualAdapter whose residuals are nonzero (so adapted keys differ from F)."""
    method = DualAdapter(epochs=2, lr=1e-2, search=False)
    method.fit(data)
    return method


@pytest.mark.parametrize("soft", [True, False])
def test_dual_components_equal_the_dense_products(synthetic, soft):
    method = DualAdapter(epochs=2, lr=1e-2, search=False, soft_labels=soft)
    method.fit(synthetic)
    module = method.module
    assert module.soft_values.ne(0).sum(1).max() == 1
    with torch.no_grad():
        terms = module.terms(synthetic.val_features)
        for beta in (0.0, 0.7, 6.0):
            comp = module.components(terms, beta)
            dense_pos = torch.exp(-beta * (1 - terms.pos_affinity)) @ module.soft_values
            dense_neg = torch.exp(-beta * terms.neg_affinity) @ module.values
            assert rel_err(comp.pos_cache, dense_pos) < 1e-6
            assert rel_err(comp.neg_cache, dense_neg) < 1e-6
            assert torch.equal(comp.pos_text, terms.pos_text)


def test_dual_components_with_dense_values_fall_back(synthetic):
    """Values with several nonzeros per row (e.g. a future soft-label scheme) stay exact."""
    module = trained_dual(synthetic).module
    g = torch.Generator().manual_seed(5)
    module.soft_values.copy_(torch.rand(module.soft_values.shape, generator=g))
    module.kernels.soft_values = ValueProduct(module.soft_values)  # derived once: rebuilt
    with torch.no_grad():
        terms = module.terms(synthetic.val_features)
        comp = module.components(terms, 2.0)
        dense = torch.exp(-2.0 * (1 - terms.pos_affinity)) @ module.soft_values
    assert rel_err(comp.pos_cache, dense) < 1e-6


def test_dual_training_gradients_equal_the_dense_products(synthetic):
    """The training step's gradients through the per-class sums equal the dense ones."""
    module = trained_dual(synthetic).module
    f, y = synthetic.view(0)[:20], synthetic.train_labels[:20]

    def dense_forward():
        t = module.terms(f)
        pos = t.pos_text + 1.5 * (torch.exp(-3.0 * (1 - t.pos_affinity)) @ module.soft_values)
        neg = t.neg_text + 1.5 * (torch.exp(-3.0 * t.neg_affinity) @ module.values)
        return 0.7 * pos + 0.3 * neg

    grads = []
    for forward in (lambda: module(f, 3.0, 1.5, 0.7), dense_forward):
        module.zero_grad()
        F.cross_entropy(forward(), y).backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for ours, dense in zip(*grads, strict=True):
        assert torch.allclose(ours, dense, rtol=1e-5, atol=1e-7)


def dense_dual_components(module: DualCache, terms, beta):
    pos = torch.exp(-beta * (1 - terms.pos_affinity)) @ module.soft_values
    neg = torch.exp(-beta * terms.neg_affinity) @ module.values
    return type(module.components(terms, beta))(terms.pos_text, pos, terms.neg_text, neg)


def test_dual_search_choice_equals_the_dense_products_choice(synthetic):
    method = trained_dual(synthetic)
    module = method.module
    betas, alphas, lams = linear_grid(0, 7, 20), linear_grid(0, 7, 10), linear_grid(0.6, 1, 5)
    with torch.no_grad():
        terms = module.terms(synthetic.val_features)
        dense = grid_search(
            lambda b: dense_dual_components(module, terms, b),
            module.combine,
            synthetic.val_labels,
            betas,
            alphas,
            lams,
        )
    ours = grid_search(
        lambda b: module.components(terms, b),
        module.combine,
        synthetic.val_labels,
        betas,
        alphas,
        lams,
    )
    assert ours == dense


def test_tip_components_and_search_equal_the_dense_products(synthetic):
    method = TipAdapter()
    method.fit(synthetic)
    module: TipCache = method.module
    with torch.no_grad():
        terms = module.terms(synthetic.val_features)
        for beta in (0.1, 1.0, 9.0):
            dense = torch.exp(-beta * (1 - terms.affinity)) @ module.values
            assert rel_err(module.components(terms, beta).cache_logits, dense) < 1e-6
        betas, alphas = method.grids(synthetic)
        found = grid_search(
            lambda b: type(module.components(terms, b))(
                terms.clip_logits, torch.exp(-b * (1 - terms.affinity)) @ module.values
            ),
            module.combine,
            synthetic.val_labels,
            betas,
            alphas,
        )
    assert (method.chosen["beta"], method.chosen["alpha"]) == (found.beta, found.alpha)


def test_dual_affinities_equal_the_normalised_keys(synthetic):
    module = trained_dual(synthetic).module
    f = synthetic.val_features
    terms = module.terms(f)
    assert torch.allclose(terms.pos_affinity, f @ module.positive_keys().T, atol=1e-6)
    assert torch.allclose(terms.neg_affinity, f @ module.negative_keys_adapted().T, atol=1e-6)


def cache_labels(layout: str, c: int = 5, k: int = 3, seed: int = 4) -> torch.Tensor:
    """blocked: each class's k entries together, classes in a scrambled order (CoOp's
    sampler); in_order: blocked, classes 0, 1, ...; shuffled: balanced, interleaved;
    unbalanced: two entries fewer."""
    g = torch.Generator().manual_seed(seed)
    if layout == "blocked":
        return torch.randperm(c, generator=g).repeat_interleave(k)
    if layout == "in_order":
        return torch.arange(c).repeat_interleave(k)
    labels = torch.arange(c).repeat_interleave(k)[torch.randperm(c * k, generator=g)]
    return labels[:-2] if layout == "unbalanced" else labels


LAYOUTS = ["blocked", "in_order", "shuffled", "unbalanced"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_blocks_gather_and_sum_equal_indexing(layout):
    labels = cache_labels(layout)
    blocks = ClassBlocks(labels, 5)
    assert (blocks.block_class is not None) == (layout in ("blocked", "in_order"))
    assert blocks.in_order == (layout == "in_order")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g)
    assert torch.equal(blocks.gather(x), x[:, labels])
    out = torch.randn(4, len(labels), generator=g)
    assert torch.equal(blocks.add_gathered_(out.clone(), x), out + x[:, labels])
    assert torch.equal(blocks.mul_gathered_(out.clone(), x), out * x[:, labels])
    e = torch.randn(4, len(labels), generator=g)
    expected = e @ F.one_hot(labels, 5).float()
    assert torch.allclose(blocks.sum(e), expected, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_residual_keys_affinity_equals_normalising_the_adapted_keys(layout):
    g = torch.Generator().manual_seed(4)
    c, d = 5, 7
    labels = cache_labels(layout, c)
    keys = torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    r = (0.5 * torch.randn(c, d, generator=g, dtype=torch.float64)).requires_grad_()
    f = torch.randn(9, d, generator=g, dtype=torch.float64, requires_grad=True)
    rk = ResidualKeys(keys, labels, c)
    assert (rk.blocks is not None) == (layout in ("blocked", "in_order"))
    reference = f @ F.normalize(keys + r[labels], dim=-1).T
    assert torch.allclose(rk.affinity(f, r), reference, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f, r: rk.affinity(f, r), (f, r))
    # the caller's f @ F^T (DualCache shares it with the negative keys): the same values and
    # gradients, and the given tensor only read (no aliasing: its other readers see it intact)
    frozen = f.detach() @ keys.T
    before = frozen.clone()
    given = rk.affinity(f, r, frozen)
    assert torch.equal(frozen, before) and given.data_ptr() != frozen.data_ptr()
    assert torch.allclose(given, reference, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f, r: rk.affinity(f, r, f.detach() @ keys.T), (f, r))
    # the caller's f @ R^T with its own autograd history (DualCache takes it from one product
    # with all its narrow matrices): R's and f's gradients still complete
    assert torch.autograd.gradcheck(lambda f, r: rk.affinity(f, r, None, f @ r.T), (f, r))
    # float32: values and residual gradients within float rounding of autograd's
    rk32 = ResidualKeys(keys.float(), labels, c)
    r32 = r.detach().float().requires_grad_()
    weights = torch.randn(9, len(labels), generator=g)
    (rk32.affinity(f.detach().float(), r32) * weights).sum().backward()
    ours, r32.grad = r32.grad.clone(), None
    dense = f.detach().float() @ F.normalize(keys.float() + r32[labels], dim=-1).T
    (dense * weights).sum().backward()
    assert torch.allclose(ours, r32.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("case", ["onehot", "soft", "zero_rows", "dense", "blocked"])
def test_cache_term_forward_is_bit_identical_and_its_gradient_is_autograds(shifted, case):
    matrix = values_cases()[case]
    values = ValueProduct(matrix)
    g = torch.Generator().manual_seed(5)
    a = (torch.rand(12, matrix.shape[0], generator=g) * 2 - 1).requires_grad_()
    ours = cache_term(a, 3.7, values, shifted)
    written = values(kernel(a, 3.7, shifted))
    assert torch.equal(ours, written)
    with torch.no_grad():
        assert torch.equal(cache_term(a, 3.7, values, shifted), written)
    weights = torch.randn(ours.shape, generator=g)
    (ours * weights).sum().backward()
    grad, a.grad = a.grad.clone(), None
    dense = torch.exp(-3.7 * ((1 - a) if shifted else a)) @ matrix
    (dense * weights).sum().backward()
    assert torch.allclose(grad, a.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("case", ["onehot", "soft", "zero_rows", "dense", "blocked"])
def test_stacked_cache_terms_are_bit_identical_to_one_beta_at_a_time(shifted, case):
    """Several betas in one (B, n, M) kernel: each beta's rows equal cache_term's, bit for
    bit (betas that are not float32 numbers included)."""
    values = ValueProduct(values_cases()[case])
    g = torch.Generator().manual_seed(6)
    a = torch.rand(7, values_cases()[case].shape[0], generator=g) * 2 - 1
    betas = [0.0, 0.1, 1 / 3, 5.5, 13.1]
    stacked = stacked_cache_terms(a, betas, values, shifted)
    assert stacked.shape == (len(betas) * 7, values.num_classes)
    for i, beta in enumerate(betas):
        assert torch.equal(stacked[i * 7 : (i + 1) * 7], cache_term(a, beta, values, shifted))


def test_stacked_components_equal_the_per_beta_components(synthetic):
    """DualAdapter's and Tip-Adapter's stacked components are their per-beta components,
    bit for bit, and the search with them picks the same setting."""
    dual = trained_dual(synthetic)
    tip = TipAdapter(search=False)
    tip.fit(synthetic)
    betas = [0.2, 1.7, 5.0]
    with torch.no_grad():
        for module in (dual.module, tip.module):
            terms = module.terms(synthetic.val_features)
            n = synthetic.val_features.shape[0]
            stacked = module.stacked_components(terms, betas)
            for i, beta in enumerate(betas):
                one = module.components(terms, beta)
                for part, whole in zip(one, stacked, strict=True):
                    assert torch.equal(whole[i * n : (i + 1) * n], part)
    found = dual.search(synthetic.val_features, synthetic.val_labels, synthetic)
    module = dual.module
    grids = dual.grids(synthetic)
    with torch.no_grad():
        terms = module.terms(synthetic.val_features)
        reference = grid_search(
            lambda b: module.components(terms, b), module.combine, synthetic.val_labels, *grids
        )
    assert found == reference


def test_cache_term_backward_runs_once():
    """The backward writes dA over the saved kernel: a second backward through the same
    graph must fail loudly (autograd's version check), never return a wrong gradient."""
    values = ValueProduct(values_cases()["onehot"])
    a = torch.rand(4, values_cases()["onehot"].shape[0]).requires_grad_()
    out = cache_term(a, 2.0, values).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("stacked", [True, False])
def test_dual_training_matches_the_written_out_formulas(synthetic, monkeypatch, stacked):
    """Training through the kernels (ResidualKeys, cache_term, the written-out classifiers,
    ARL and consistency, with or without the stacked narrow products) ends where the plain
    formulas (``fast=False``: normalised adapted keys and classifiers, dense value
    products, cdist ARL, two cosines) end, within 1e-5."""
    from fewclip.methods.kernels import dual as kernels

    if not stacked:
        monkeypatch.setattr(kernels, "STACKED_PRODUCT_CLASSES", 0)
    fast = DualAdapter(epochs=3, lr=1e-2, search=False)
    fast.fit(synthetic)
    assert fast.module.kernels.stack == stacked
    monkeypatch.undo()
    slow = DualAdapter(epochs=3, lr=1e-2, search=False, fast=False)
    slow.fit(synthetic)
    assert slow.module.kernels is None
    f = synthetic.val_features
    assert fast.module.r_k.abs().max() > 1e-3  # the residuals did train
    for name in ("r_t", "r_d", "r_k", "r_n", "r_kn"):
        assert torch.allclose(getattr(fast.module, name), getattr(slow.module, name), atol=1e-5)
    assert torch.allclose(fast.logits(f), slow.logits(f), rtol=1e-5, atol=1e-4)
