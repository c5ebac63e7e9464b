"""DualAdapter: hand cases for every formula, invariants, ablation options, synthetic runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_feature_data

from fewclip.methods import cache_method
from fewclip.methods.base import FeatureData, accuracy
from fewclip.methods.dual_adapter import (
    DUAL_DEFAULTS,
    DualAdapter,
    DualCache,
    adaptive_reranking_loss,
    consistency_loss,
    pseudo_negative_keys,
    shot_slots,
    soft_labels,
)
from fewclip.methods.kernels import dual as kernels
from fewclip.methods.kernels.dual import reranking_loss, stacked_products
from fewclip.methods.kernels.residual_keys import NegativeKeyProducts
from fewclip.methods.search import grid_search_loop, linear_grid

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_data(num_classes=10, shots=8, dim=64, seed=0)


def tiny_cache(**kw) -> DualCache:
    """d = 2, C = 2, one shot each: keys e1 (class 0), e2 (class 1); s = 10.

    W_t = I, W_d = SWAP (so W+ = [[.45, .55], [.55, .45]]), W_n = SWAP.
    """
    keys, labels = torch.eye(2), torch.tensor([0, 1])
    return DualCache(keys, labels, torch.eye(2), SWAP, SWAP, logit_scale=10.0, **kw)


# -- the forward ---------------------------------------------------------------------------


def test_unified_logits_hand_case():
    f = E1[None]
    beta, alpha, lam = 1.0, 2.0, 0.75
    # pos_text = 10 * (.45, .55); affinities to the keys (1, 0): pos_cache = (1, 1/e)
    pos = torch.tensor([4.5 + alpha * 1.0, 5.5 + alpha / math.e])
    # F- = (e2, e1): neg affinities (0, 1), exp(-beta * a) = (1, 1/e);
    # neg_text = 0.15 * 10 * (1 - f @ W_n) = 1.5 * (1 - (0, 1)) = (1.5, 0)
    neg = torch.tensor([1.5 + alpha * 1.0, 0.0 + alpha / math.e])
    expected = lam * pos + (1 - lam) * neg
    assert torch.allclose(tiny_cache()(f, beta, alpha, lam)[0], expected)
    # positive path alone (lam = 1), negative path alone (lam = 0)
    assert torch.allclose(tiny_cache()(f, beta, alpha, 1.0)[0], pos)
    assert torch.allclose(tiny_cache()(f, beta, alpha, 0.0)[0], neg)


def test_residuals_are_added_then_renormalised():
    cache = tiny_cache()
    with torch.no_grad():
        cache.r_k[0] = E2  # class 0's key becomes norm(e1 + e2)
        cache.r_t[1] = E1  # W_t's class-1 column becomes norm(e2 + e1)
        cache.r_n[0] = -SWAP[:, 0] + E1  # W_n's class-0 column becomes e1
        cache.r_kn[1] = torch.tensor([0.0, 3.0])  # F- of class 1 becomes norm(e1 + 3 e2)
    f = E1[None]
    c = cache.components(cache.terms(f), beta=2.0)
    assert torch.allclose(c.pos_cache[0, 0], torch.tensor(math.exp(-2 * (1 - 1 / math.sqrt(2)))))
    w_plus_11 = 0.45 / math.sqrt(2) + 0.55  # f . W+[:, 1] = .45 e1.norm(e1 + e2) + .55 e1.e1
    assert torch.allclose(c.pos_text[0, 1], torch.tensor(10 * w_plus_11))
    assert torch.allclose(c.neg_text[0, 0], torch.tensor(0.0))  # 1.5 * (1 - f . e1)
    assert torch.allclose(c.neg_cache[0, 1], torch.tensor(math.exp(-2 / math.sqrt(10))))


def test_key_residual_moves_every_key_of_its_class():
    keys = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 1, 0, 1, 0])
    w = F.normalize(torch.randn(4, 2), dim=0)
    cache = DualCache(keys, labels, w, w, w, logit_scale=10.0)
    with torch.no_grad():
        cache.r_k[0] = 1.0
    moved = ~torch.isclose(cache.positive_keys(), keys).all(-1)
    assert moved.tolist() == [True, False, True, False, True]


def test_alpha_zero_leaves_the_text_parts(synthetic):
    data, test_f, _ = synthetic
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    s, lam = data.logit_scale, 0.7
    w_plus = 0.45 * data.classifiers["positive"] + 0.55 * data.classifiers["description"]
    text = lam * s * test_f @ w_plus + (1 - lam) * 0.15 * s * (
        1 - test_f @ data.classifiers["negative"]
    )
    assert torch.allclose(method.logits(test_f, alpha=0.0, lam=lam), text, atol=1e-5)


def test_lam_one_is_the_positive_path_alone(synthetic):
    data, test_f, _ = synthetic
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    module, beta, alpha = method.module, 0.8, 1.5
    w_plus = 0.45 * data.classifiers["positive"] + 0.55 * data.classifiers["description"]
    keys = data.cache_keys
    positive = data.logit_scale * test_f @ w_plus + alpha * torch.exp(
        -beta * (1 - test_f @ keys.T)
    ) @ soft_labels(keys, data.train_labels, data.num_classes)
    assert torch.allclose(
        method.logits(test_f, beta=beta, alpha=alpha, lam=1.0), positive, atol=1e-5
    )
    with torch.no_grad():  # the negative path has no say at lam = 1
        module.w_n.copy_(torch.randn_like(module.w_n))
    assert torch.allclose(
        method.logits(test_f, beta=beta, alpha=alpha, lam=1.0), positive, atol=1e-5
    )


def test_zero_residuals_give_the_training_free_logits(synthetic):
    data, test_f, _ = synthetic
    trained = DualAdapter(epochs=3, lr=1e-2, search=False)
    trained.fit(data)
    assert all(p.abs().sum() > 0 for p in trained.module.parameters())
    free = DualAdapter(train=False, search=False)
    free.fit(data)
    assert not torch.allclose(trained.logits(test_f), free.logits(test_f))
    with torch.no_grad():
        for p in trained.module.parameters():
            p.zero_()
    assert torch.allclose(trained.logits(test_f), free.logits(test_f))


# -- inputs built from the few-shot set -----------------------------------------------------


def test_shot_slots_count_within_each_class():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    assert shot_slots(labels, 3).tolist() == [0, 0, 1, 0, 1, 2]


def test_soft_labels_hand_case():
    # class 0: keys e1, e1, e2 -> m = (.5, .5, 0); class 1: one shot -> one-hot
    keys = torch.stack([E1, E2, E1, E2])
    labels = torch.tensor([0, 1, 0, 0])
    soft = soft_labels(keys, labels, 2, temperature=0.1)
    w = torch.softmax(torch.tensor([5.0, 5.0, 0.0]), 0)
    assert torch.allclose(soft[[0, 2, 3], 0], 3 * w)
    assert torch.equal(soft[1], torch.tensor([0.0, 1.0]))
    assert torch.all(soft[[0, 2, 3], 1] == 0)


def test_soft_labels_sum_to_shots_and_are_one_hot_at_one_shot(synthetic):
    data, _, _ = synthetic
    keys, labels, c = data.cache_keys, data.train_labels, data.num_classes
    soft = soft_labels(keys, labels, c)
    per_class = torch.zeros(c, c).index_add(0, labels, soft)
    assert torch.allclose(per_class, 8 * torch.eye(c))
    one = torch.arange(c)  # the first shot of each class only
    first = torch.stack([(labels == k).nonzero()[0, 0] for k in range(c)])
    assert torch.equal(soft_labels(keys[first], one, c), torch.eye(c))
    assert not torch.allclose(soft, F.one_hot(labels, c).float())  # refinement does something


def test_pseudo_negative_cache_hand_case():
    e = torch.eye(3)
    # class 0: (e1, e2), class 1: (e3, e1), class 2: (e2, e3), in slots (k = 0, k = 1)
    keys = torch.stack([e[0], e[1], e[2], e[0], e[1], e[2]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = F.normalize(
        torch.stack(
            [
                e[2] + e[1],  # (0, k=0): slot 0 of classes 1 and 2
                e[0] + e[2],  # (0, k=1)
                e[0] + e[1],  # (1, k=0): slot 0 of classes 0 and 2
                e[1] + e[2],  # (1, k=1)
                e[0] + e[2],  # (2, k=0)
                e[1] + e[0],  # (2, k=1)
            ]
        ),
        dim=-1,
    )
    assert torch.allclose(pseudo_negative_keys(keys, labels, 3), expected)
    # classes may interleave: slots count the items of each class in order
    perm = torch.tensor([0, 2, 4, 1, 3, 5])
    assert torch.allclose(pseudo_negative_keys(keys[perm], labels[perm], 3), expected[perm])
    # unbalanced: class 2 has one shot; slot 1 averages over the classes that have one
    keep = torch.tensor([0, 1, 2, 3, 4])
    unbalanced = pseudo_negative_keys(keys[keep], labels[keep], 3)
    assert torch.allclose(unbalanced[1], e[0])  # (0, k=1): only class 1's slot 1
    assert torch.allclose(unbalanced[4], F.normalize(e[0] + e[2], dim=0))


@pytest.mark.parametrize("layout", ["blocked", "in_order", "shuffled", "unbalanced", "lone_slot"])
def test_negative_key_products_equal_the_product_with_the_pseudo_negative_keys(layout):
    """f @ F-^T from f @ F^T (NegativeKeyProducts) equals the product with the explicit
    pseudo-negative keys, on every cache layout and where a slot has no other class (a
    zero key); CLIP-like features (a shared direction, cosines near 0.5) at C = 200."""
    g = torch.Generator().manual_seed(3)
    c, k, d = 200, 4, 64
    if layout == "in_order":
        labels = torch.arange(c).repeat_interleave(k)
    elif layout == "blocked":
        labels = torch.randperm(c, generator=g).repeat_interleave(k)
    else:
        labels = torch.arange(c).repeat_interleave(k)[torch.randperm(c * k, generator=g)]
        if layout == "unbalanced":
            labels = labels[:-7]
        if layout == "lone_slot":  # class 0 gets a fifth shot, a slot no other class has
            labels = torch.cat([labels, torch.tensor([0])])
    common = torch.randn(1, d, generator=g)
    keys = F.normalize(torch.randn(labels.numel(), d, generator=g) + common, dim=-1)
    f = F.normalize(torch.randn(9, d, generator=g) + common, dim=-1)
    exact = f.double() @ pseudo_negative_keys(keys.double(), labels, c).T
    products = NegativeKeyProducts(keys, labels, c, shot_slots(labels, c))
    got = products(f, f @ keys.T)
    # as close to the float64 value as the float32 product with F- is (both about 5e-7)
    assert (got - exact).abs().max() < 1e-6
    assert (f @ pseudo_negative_keys(keys, labels, c).T - exact).abs().max() < 1e-6
    assert products.shots == (k if layout in ("blocked", "in_order") else 0)  # the fast path
    if layout == "lone_slot":
        assert torch.equal(got[:, -1], torch.zeros(9))  # F- of the lone fifth shot is 0


# -- losses --------------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive_reranking_loss", [adaptive_reranking_loss, reranking_loss])
def test_adaptive_reranking_loss_hand_case(adaptive_reranking_loss):
    """The plain loss and the fast one (written-out gradient) on a hand case."""
    f = torch.tensor([[0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0])
    d0, d1 = math.sqrt(0.8), math.sqrt(0.4)  # d2 = sqrt(3.2) never violates
    # nearest: class 1 (margin (1 - 0) / 4), class 0 (itself, margin 0), class 2 (2 / 4)
    violation = d0 + 0.25 - d1
    assert adaptive_reranking_loss(f, protos, y, scale=4.0, k=3).item() == pytest.approx(
        violation / 3, rel=1e-5
    )
    assert adaptive_reranking_loss(f, protos, y, k=2).item() == pytest.approx(
        violation / 2, rel=1e-5
    )
    assert adaptive_reranking_loss(f, protos, y, scale=1.0, k=1).item() == pytest.approx(
        d0 + 1.0 - d1, rel=1e-5
    )
    # prototypes are used as they are (W+ is not re-normalised)
    assert adaptive_reranking_loss(f, 0.5 * protos, y).item() != pytest.approx(
        violation / 3, rel=1e-3
    )


def test_consistency_loss_hand_case():
    w_t = torch.eye(2)
    w_plus = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    # per class: columns (2, 0) vs e1 -> cos 1; (1, 1) vs e2 -> 1/sqrt(2)
    by_class = (1 - 1 / math.sqrt(2)) / 2
    assert consistency_loss(w_plus, w_t, w_t).item() == pytest.approx(by_class, rel=1e-5)
    # official: rows (2, 1) vs (1, 0) -> 2/sqrt(5); (0, 1) vs (0, 1) -> 1
    official = (1 - 2 / math.sqrt(5)) / 2
    assert consistency_loss(w_plus, w_t, w_t, mode="official").item() == pytest.approx(
        official, rel=1e-5
    )
    # the weights: W+ = W_t, W_d orthogonal to it in every class -> 0.55
    assert consistency_loss(w_t, w_t, SWAP).item() == pytest.approx(0.55)
    with pytest.raises(ValueError):
        consistency_loss(w_t, w_t, w_t, mode="rows")


@pytest.mark.parametrize("mode", ["class", "official"])
def test_consistency_loss_equals_two_cosine_similarities(mode):
    """The shared-norm form equals the two F.cosine_similarity of the definition (value and
    gradient), with the target computed inside or passed in."""
    g = torch.Generator().manual_seed(3)
    w_t, w_d = torch.randn(32, 20, generator=g), torch.randn(32, 20, generator=g)
    w_plus = torch.randn(32, 20, generator=g, requires_grad=True)
    dim = 0 if mode == "class" else 1
    cos_t = F.cosine_similarity(w_plus, w_t, dim=dim, eps=1e-7)
    cos_d = F.cosine_similarity(w_plus, w_d, dim=dim, eps=1e-7)
    reference = (0.45 * (1 - cos_t) + 0.55 * (1 - cos_d)).mean()
    (expected_grad,) = torch.autograd.grad(reference, w_plus)
    target = kernels.consistency_target(w_t, w_d, dim, (0.45, 0.55))
    for loss in (
        consistency_loss(w_plus, w_t, w_d, mode=mode),
        kernels.consistency_loss(w_plus, target, dim, (0.45, 0.55)),
    ):
        assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
        (grad,) = torch.autograd.grad(loss, w_plus)
        assert torch.allclose(grad, expected_grad, atol=1e-7)


@pytest.mark.parametrize("num_classes", [40, 100])  # margins dense / gathered (above 64)
def test_adaptive_reranking_loss_equals_the_cdist_definition(num_classes):
    """The written-out gradient: the loss and the prototypes' gradient of the definition
    through torch.cdist (at a size where cdist takes its matrix-product path), with the
    dots computed inside or passed in, and no gradient for the features."""
    g = torch.Generator().manual_seed(2)
    f = F.normalize(torch.randn(64, 48, generator=g), dim=-1)
    protos = (0.3 * torch.randn(num_classes, 48, generator=g)).requires_grad_()
    y = torch.randint(0, num_classes, (64,), generator=g)
    d = torch.cdist(f, protos)
    nearest_d, nearest = d.topk(3, dim=1, largest=False)
    t_y = protos[y]
    margins = (1.0 - (protos[nearest] * t_y[:, None]).sum(-1)) / 4.0
    anchor = (f - t_y).norm(dim=-1, keepdim=True)
    reference = torch.clamp(anchor + margins - nearest_d, min=0).mean()
    (expected,) = torch.autograd.grad(reference, protos)
    plain = adaptive_reranking_loss(f, protos, y)
    assert torch.allclose(torch.autograd.grad(plain, protos)[0], expected, atol=1e-6)
    for dots in (None, f @ protos.T):
        loss = reranking_loss(f, protos, y, dots=dots)
        assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
        (grad,) = torch.autograd.grad(loss, protos)
        assert torch.allclose(grad, expected, atol=1e-6)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("num_classes", [6, 80])  # margins dense / gathered (above 64)
def test_adaptive_reranking_loss_gradient_passes_gradcheck(num_classes, monkeypatch):
    """Both inputs' gradients of the written-out backward against finite differences
    (float64), with the label among a sample's nearest prototypes (both terms on one row)."""
    g = torch.Generator().manual_seed(4)
    f = F.normalize(torch.randn(10, 5, generator=g, dtype=torch.float64), dim=-1)
    protos = 0.8 * torch.randn(num_classes, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, num_classes, (10,), generator=g)
    f.requires_grad_()
    protos.requires_grad_()
    loss = reranking_loss(f, protos, y, scale=1.0, k=3)
    assert loss.item() > 0  # some hinges are active
    assert torch.autograd.gradcheck(
        lambda a, b: reranking_loss(a, b, y, scale=1.0, k=3), (f, protos)
    )
    monkeypatch.setattr(kernels, "DENSE_MARGIN_CLASSES", 0)  # the gathered path on the same case
    assert torch.autograd.gradcheck(
        lambda a, b: reranking_loss(a, b, y, scale=1.0, k=3), (f, protos)
    )


@pytest.mark.parametrize("stack", [True, False])
def test_stacked_products_equal_one_product_each(stack):
    g = torch.Generator().manual_seed(7)
    f = torch.randn(30, 16, generator=g)
    matrices = [torch.randn(n, 16, generator=g) for n in (5, 5, 3)]
    parts = stacked_products(f, matrices, stack)
    assert [tuple(p.shape) for p in parts] == [(30, 5), (30, 5), (30, 3)]
    for part, m in zip(parts, matrices, strict=True):
        assert torch.allclose(part, f @ m.T, atol=1e-5)


def test_a_training_step_makes_two_products_with_the_features(synthetic):
    """Up to STACKED_PRODUCT_CLASSES classes a step's forward multiplies the features twice:
    once with the cache keys and once with the stack of W+, the negative classifier, R_k,
    R_k- and F-'s slot sums (five products before); its backward once more (their
    gradient); ARL's margins come from the (C, C) products of W+."""
    from torch.utils._python_dispatch import TorchDispatchMode

    data = synthetic[0]
    method = DualAdapter(epochs=1, search=False)
    method.fit(data)
    module, f, y = method.module, data.cache_keys, data.train_labels
    c, k = data.num_classes, 8
    shapes = []

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.mm.default:
                shapes.append((tuple(args[0].shape), tuple(args[1].shape)))
            return func(*args, **(kwargs or {}))

    loss_fn = method.training_loss(module, *method.initial(data))
    with Products():
        loss_fn(f, y).backward()
    n, d = f.shape
    with_features = [s for s in shapes if s[0] == (n, d) or s[1] == (n, d)]
    assert sorted(with_features) == sorted(
        [((n, d), (d, 4 * c + k)), ((n, d), (d, n)), ((4 * c + k, n), (n, d))]
    ), shapes


# -- the method ----------------------------------------------------------------------------


def test_search_equals_the_official_loop(synthetic):
    data, _, _ = synthetic
    method = DualAdapter(train=False, beta_range=(0, 7, 25), alpha_range=(0, 7, 10))
    fit = method.fit(data)
    module = method.module
    terms = module.terms(data.val_features)
    reference = grid_search_loop(
        lambda b: module.components(terms, b),
        module.combine,
        data.val_labels,
        *method.grids(data),
    )
    chosen = (fit.chosen["beta"], fit.chosen["alpha"], fit.chosen["lam"])
    assert chosen == (reference.beta, reference.alpha, reference.lam)
    assert fit.chosen["search_val_acc"] == reference.accuracy


def test_search_in_val_chunks_equals_the_official_loop(synthetic, monkeypatch):
    """Memory flat in val size: the search sees val 7 images at a time, same choice."""
    data, _, _ = synthetic
    method = DualAdapter(train=False, beta_range=(0, 7, 25), alpha_range=(0, 7, 10))
    method.fit(data)
    module = method.module
    terms = module.terms(data.val_features)
    reference = grid_search_loop(
        lambda b: module.components(terms, b), module.combine, data.val_labels, *method.grids(data)
    )
    seen = []
    original = module.terms
    monkeypatch.setattr(module, "terms", lambda f: seen.append(len(f)) or original(f))
    monkeypatch.setattr(cache_method, "LOGITS_CHUNK", 7)
    found = method.search(data.val_features, data.val_labels, data)
    assert (found.beta, found.alpha, found.lam) == (reference.beta, reference.alpha, reference.lam)
    assert (
        found.correct == reference.correct and max(seen) == 7 and sum(seen) == len(data.val_labels)
    )


def test_dual_adapter_beats_zero_shot(synthetic):
    data, test_f, test_y = synthetic
    method = DualAdapter()
    fit = method.fit(data, seed=0)
    zero_shot = accuracy(data.logit_scale * test_f @ data.classifiers["positive"], test_y)
    assert accuracy(method.logits(test_f), test_y) > zero_shot + 15
    assert len(fit.history) == 30 and fit.best_epoch is not None
    assert method.trainable_parameters() == 5 * data.num_classes * data.dim


def test_same_seed_same_result(synthetic):
    data, test_f, _ = synthetic
    runs = []
    for _ in range(2):
        method = DualAdapter(epochs=4, lr=1e-2, alpha_range=(0, 7, 10))
        fit = method.fit(data, seed=5)
        runs.append((fit.chosen, fit.history, method.logits(test_f)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


@pytest.mark.parametrize(
    "options, lam, params",
    [
        ({"paths": "positive"}, 1.0, 3),
        ({"paths": "negative"}, 0.0, 2),
        ({"paths": "negative", "negative_cache": False}, 0.0, 1),
        ({"negative_cache": False}, None, 4),
        ({"search_lam": False}, 0.75, 5),
        ({"search_lam": False, "init_lam": 0.9}, 0.9, 5),
        ({"train": False}, None, 0),
    ],
)
def test_ablation_options(synthetic, options, lam, params):
    data, test_f, _ = synthetic
    method = DualAdapter(epochs=2, beta_range=(0, 7, 10), alpha_range=(0, 7, 10), **options)
    fit = method.fit(data)
    if lam is not None:
        assert fit.chosen["lam"] == lam
    assert method.trainable_parameters() == params * data.num_classes * data.dim
    if options.get("negative_cache") is False:
        c = method.module.components(method.module.terms(test_f), beta=1.0)
        assert torch.all(c.neg_cache == 0)


def test_no_soft_labels_uses_one_hot(synthetic):
    data, _, _ = synthetic
    method = DualAdapter(soft_labels=False, train=False, search=False)
    method.fit(data)
    assert torch.equal(method.module.soft_values, method.module.values)


def test_missing_classifiers(synthetic):
    data, _, _ = synthetic
    no_description = dataclasses.replace(
        data, classifiers={k: v for k, v in data.classifiers.items() if k != "description"}
    )
    method = DualAdapter(train=False, search=False)
    fit = method.fit(no_description)
    assert any("W_d = W_t" in note for note in fit.notes)
    assert torch.equal(method.module.w_d, data.classifiers["positive"])
    only_positive = dataclasses.replace(
        data, classifiers={"positive": data.classifiers["positive"]}
    )
    with pytest.raises(ValueError, match="negative"):
        DualAdapter(train=False).fit(only_positive)
    DualAdapter(train=False, search=False, paths="positive").fit(only_positive)


def test_per_dataset_defaults(synthetic):
    data, _, _ = synthetic
    data100: FeatureData = dataclasses.replace(data, logit_scale=100.0)
    betas, alphas, lams = DualAdapter(dataset="imagenet").grids(data100)
    assert betas == linear_grid(0, 4, 200) and alphas == linear_grid(0, 4, 40)
    assert lams == linear_grid(0.6, 0.9, 20)
    assert DualAdapter(dataset="imagenet").initial(data100) == (2, 1.2, 0.75)
    assert DualAdapter(dataset="imagenet").initial(data)[0] == pytest.approx(0.6)  # s = 30
    epochs = {k: v.epochs for k, v in DUAL_DEFAULTS.items()}
    assert (epochs["imagenet"], epochs["eurosat"], epochs["oxford_flowers"]) == (20, 200, 60)
    fit = DualAdapter(dataset="not-a-benchmark", search=False).fit(data)
    assert fit.chosen["epochs"] == 30 and len(fit.history) == 30


def test_options_are_checked():
    with pytest.raises(ValueError, match="paths"):
        DualAdapter(paths="neither")
    with pytest.raises(ValueError, match="consistency"):
        DualAdapter(consistency="rows")
    with pytest.raises(ValueError, match="unknown option"):
        DualAdapter(gamma=1.0)


def test_fit_does_not_alias_the_input_data(synthetic):
    data, _, _ = synthetic
    before = {k: v.clone() for k, v in data.classifiers.items()}
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    with torch.no_grad():
        for buffer in method.module.buffers():
            buffer.zero_()
    assert all(torch.equal(before[k], data.classifiers[k]) for k in before)


def test_best_epoch_is_restored_and_snapshots_hold_residuals_only(synthetic):
    data, _, _ = synthetic
    method = DualAdapter(epochs=6, lr=3e-2, search=False)
    fit = method.fit(data, seed=1)
    assert sorted(method.module.state_dict()) == ["r_d", "r_k", "r_kn", "r_n", "r_t"]
    accs = [h["val_acc"] for h in fit.history]
    assert fit.best_epoch == accs.index(max(accs)) and fit.best_val_acc == max(accs)
    assert accuracy(method.logits(data.val_features), data.val_labels) == fit.best_val_acc


def test_logits_in_chunks_equal_one_forward(synthetic, monkeypatch):
    data, test_f, _ = synthetic
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    whole = method.module(test_f, 0.5, 1.0, 0.8)
    monkeypatch.setattr(cache_method, "LOGITS_CHUNK", 7)
    chunks = method.logits(test_f, beta=0.5, alpha=1.0, lam=0.8)
    # equal to float rounding: a BLAS product's rounding may depend on its row count (here
    # the stacked narrow products, 2.6e-7 of the largest logit); a chunk out of place or
    # lost would be off by whole logits
    scale = whole.abs().max().item()
    assert (chunks - whole).abs().max().item() <= 1e-6 * scale


@pytest.mark.parametrize("rows", [None, 7])  # one chunk / several
def test_frozen_validation_equals_the_chunked_forward(synthetic, monkeypatch, rows):
    """The validation with f_val @ F^T kept for the fit gives the chunked forward bit for
    bit, also after the residuals moved; other features and a val set over the limit
    take the chunked forward itself."""
    data, test_f, _ = synthetic
    if rows is not None:
        monkeypatch.setattr(cache_method, "LOGITS_CHUNK", rows)
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    module, setting = method.module, (0.6, 1.3, 0.7)
    validate = kernels.FrozenValidation(module, data.val_features, setting)
    assert validate.products is not None and len(validate.products) >= (1 if rows is None else 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # an epoch's step moves the residuals; the kept product stays valid
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            expected = module.chunked(data.val_features, *setting)
            assert torch.equal(validate(data.val_features), expected)
            assert torch.equal(validate(test_f), module.chunked(test_f, *setting))
    monkeypatch.setattr(kernels, "KEPT_PRODUCT_ELEMENTS", 1)
    assert kernels.FrozenValidation(module, data.val_features, setting).products is None


# --------------------------------------------------------------------------- v2 = SimNL


def _noisy_keys():
    # K = 2 shots asked; label noise left class 0 with three entries and class 1 with one
    keys = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    return keys, torch.tensor([0, 0, 0, 1])


def test_soft_labels_v2_hand_case():
    # class 0: similarity sums to the other entries: 0.6 + 0 = 0.6, 0.6 + 0.8 = 1.4, 0.8;
    # SimNL: m = sum / (K - 1) = sum, w = softmax(m / 1), L~ = K w = 2 w; a lone entry: 2
    keys, labels = _noisy_keys()
    soft = soft_labels(keys, labels, 2, temperature=1.0, shots=2)
    e = [math.exp(x) for x in (0.6, 1.4, 0.8)]
    expected = [2 * x / sum(e) for x in e]
    assert soft[:3, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert soft[3].tolist() == pytest.approx([0.0, 2.0])
    assert (soft[:3, 1] == 0).all()
    # v1 generalised: each group's own size (3 and 1), temperature 0.1
    v1 = soft_labels(keys, labels, 2, temperature=0.1)
    e1 = [math.exp(x / 2 / 0.1) for x in (0.6, 1.4, 0.8)]
    assert v1[:3, 0].tolist() == pytest.approx([3 * x / sum(e1) for x in e1], rel=1e-5)
    assert v1[3].tolist() == pytest.approx([0.0, 1.0])
    # K = 1: one-hot (SimNL's formula would divide by zero)
    assert torch.equal(soft_labels(keys, labels, 2, 1.0, shots=1), F.one_hot(labels, 2).float())


def test_version_two_is_simnl_settings_on_the_same_module(synthetic):
    data, _, _ = synthetic
    v1 = DualAdapter(version=1, train=False, search=False)
    v2 = DualAdapter(version=2, train=False, search=False)
    v1.fit(data)
    v2.fit(data)
    assert type(v1.module) is type(v2.module) is DualCache
    assert v1.chosen["soft_temperature"] == 0.1 and v2.chosen["soft_temperature"] == 1.0
    keys, labels, c = data.cache_keys, data.train_labels, data.num_classes
    k = labels.shape[0] // c  # data.shots is unset here: K = M / C
    assert torch.allclose(v2.module.soft_values, soft_labels(keys, labels, c, 1.0, shots=k))
    # temperature 1 is much flatter than 0.1: the soft labels stay closer to one-hot
    one_hot = F.one_hot(labels, c).float()
    gap = lambda m: (m.module.soft_values - one_hot).abs().max()
    assert gap(v2) < gap(v1)
    # every other buffer and the logits' text parts are the same
    assert torch.equal(v1.module.negative_keys, v2.module.negative_keys)
    assert not torch.equal(v1.module.soft_values, v2.module.soft_values)
    with pytest.raises(ValueError, match="version"):
        DualAdapter(version=3)


def test_an_unknown_consistency_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="consistency must be 'class' or 'official', not 'rows'"):
        DualAdapter(consistency="rows")


def test_the_forward_computes_one_product_with_the_cache_keys(synthetic):
    """f @ F-^T comes from f @ F^T (NegativeKeyProducts): one (N, d) x (d, M) product per
    forward, not two (two before), with the affinities still those of the explicit keys."""
    from torch.utils._python_dispatch import TorchDispatchMode

    data = synthetic[0]
    method = DualAdapter(epochs=1, search=False)
    method.fit(data)
    module = method.module
    f = data.val_features.clone()  # not the tensor whose product validation kept
    m = module.keys.shape[0]
    shapes = []

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default):
                shapes.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Products():
        terms = module.terms(f)
    assert sum(s[-1] == m for s in shapes) == 1, shapes
    assert torch.allclose(terms.neg_affinity, f @ module.negative_keys_adapted().T, atol=1e-6)


# -- fast == plain, on every cache layout and under label noise ------------------------------


def _layout_data(data: FeatureData, layout: str, noise: bool) -> FeatureData:
    """The synthetic few-shot set re-listed: blocked (each class's shots together, classes
    in a scrambled order), shuffled (interleaved), unbalanced (three entries fewer); with
    ``noise``, a fifth of the labels replaced by another class (unequal class counts)."""
    g = torch.Generator().manual_seed(11)
    y, c = data.train_labels, data.num_classes
    order = torch.argsort(y * 0 + torch.randperm(c, generator=g)[y], stable=True)
    if layout != "blocked":
        order = torch.randperm(y.numel(), generator=g)
    if layout == "unbalanced":
        order = order[:-3]
    labels = y[order].clone()
    if noise:
        flip = torch.rand(labels.numel(), generator=g) < 0.2
        labels[flip] = (
            labels[flip] + torch.randint(1, c, (labels.numel(),), generator=g)[flip]
        ) % c
    return dataclasses.replace(
        data,
        train_features=data.train_features[order],
        train_views=data.train_views[:, order],
        train_labels=labels,
    )


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("layout", ["blocked", "shuffled", "unbalanced"])
def test_fast_equals_plain(synthetic, layout, noise):
    """Every kernel of the fast path against the plain formulas on one cache: the forward
    (affinities through ResidualKeys and NegativeKeyProducts, per-class value sums, the
    written-out classifiers, stacked narrow products), a training step's loss and
    gradients (ARL's and the consistency's fast forms), and the search (pruning, alpha
    intervals, stacked betas) against the exhaustive one."""
    data = _layout_data(synthetic[0], layout, noise)
    g = torch.Generator().manual_seed(2)
    ranges = dict(beta_range=(0, 7, 12), alpha_range=(0, 7, 8), lam_range=(0.6, 1.0, 5))
    fast, plain = DualAdapter(train=False, **ranges), DualAdapter(train=False, fast=False, **ranges)
    fast.fit(data)
    plain.fit(data)
    assert fast.module.kernels.positive.blocks is not None or layout != "blocked" or noise
    with torch.no_grad():
        for name, p in fast.module.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
            getattr(plain.module, name).copy_(p)
    f = data.val_features
    for setting in ((0.5, 1.0, 0.8), (3.0, 2.5, 0.6), (0.0, 0.0, 1.0)):
        ours, reference = fast.module(f, *setting), plain.module(f, *setting)
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)
    batch, y = data.view(0)[:40], data.train_labels[:40]
    grads = []
    for method in (fast, plain):
        method.module.zero_grad()
        loss = method.training_loss(method.module, 2.0, 1.5, 0.75)(batch, y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in method.module.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for ours, reference in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6)
    found = fast.search(data.val_features, data.val_labels, data)
    reference = plain.search(data.val_features, data.val_labels, data)
    assert (found.beta, found.alpha, found.lam, found.correct) == (
        reference.beta,
        reference.alpha,
        reference.lam,
        reference.correct,
    )
