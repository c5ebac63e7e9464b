"""Zero-shot CLIP, linear probe and CLIP-Adapter on hand cases and synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from synthetic import make_feature_data

from fewclip.methods import FEATURE_METHODS, get_method
from fewclip.methods.base import accuracy
from fewclip.methods.clip_adapter import CLIPAdapter, CLIPAdapterModule, dassl_epoch_factor
from fewclip.methods.linear_probe import LinearProbe, fit_logistic, lpclip_search


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_data(num_classes=10, shots=16, dim=64, seed=0)


def zero_shot_logits(data, f):
    return data.logit_scale * f @ data.classifiers["positive"]


def test_registry_lists_every_feature_method():
    assert set(FEATURE_METHODS) == {
        "zero_shot",
        "linear_probe",
        "clip_adapter",
        "tip_adapter",
        "tip_adapter_f",
        "dual_adapter",
        "gda",
        "ape",
        "ape_t",
        "taskres",
        "clap",
        "lp_pp",
    }
    with pytest.raises(ValueError, match="unknown option"):
        get_method("clip_adapter", alhpa=0.3)


# --------------------------------------------------------------------------- zero-shot


def test_zero_shot_hand_case(synthetic):
    data, _, _ = synthetic
    method = get_method("zero_shot")
    method.fit(data)
    f = torch.zeros(1, data.dim)
    f[0, 0] = 1.0
    # s * f @ W picks row 0 of W, times s
    assert torch.allclose(method.logits(f), data.logit_scale * data.classifiers["positive"][0])
    other = torch.eye(data.dim)[:, :3]
    assert torch.allclose(method.logits_for(f, other), data.logit_scale * other[0:1])
    with pytest.raises(ValueError, match="no 'nope' classifier"):
        get_method("zero_shot", classifier="nope").fit(data)


# --------------------------------------------------------------------------- CLIP-Adapter


def test_clip_adapter_hand_case():
    # d = 2, reduction 2 (hidden 1): W1 = [[1], [0]], W2 = [[2, 0]]; f = (0.6, 0.8)
    # A(f) = ReLU(ReLU(0.6) * (2, 0)) = (1.2, 0); f* = 0.5 * (1.2, 0) + 0.5 * (0.6, 0.8)
    w = torch.eye(2)
    module = CLIPAdapterModule(w, logit_scale=10.0, variant="visual", alpha=0.5, reduction=2)
    with torch.no_grad():
        module.visual[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        module.visual[2].weight.copy_(torch.tensor([[2.0], [0.0]]))
    f = torch.tensor([[0.6, 0.8]])
    f_star = torch.tensor([0.9, 0.4])
    expected = 10.0 * f_star / f_star.norm()  # W = I
    assert torch.allclose(module(f), expected.unsqueeze(0), atol=1e-6)


@pytest.mark.parametrize("variant", ["visual", "text", "both"])
def test_zero_adapter_and_zero_ratio_give_zero_shot(synthetic, variant):
    data, test_f, _ = synthetic
    method = CLIPAdapter(variant=variant)
    module = method.build(data)
    # ratios 0: the adapters are ignored whatever their weights
    module.alpha = module.beta = 0.0
    assert torch.allclose(module(test_f), zero_shot_logits(data, test_f), atol=1e-5)
    # zero adapter weights: A(x) = 0, the residual blend re-normalises back to x
    module.alpha = module.beta = 0.7
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    assert torch.allclose(module(test_f), zero_shot_logits(data, test_f), atol=1e-5)


def test_adapter_width_follows_the_feature_dimension(synthetic):
    data, _, _ = synthetic
    module = CLIPAdapter(variant="both").build(data)
    assert module.visual[0].weight.shape == (data.dim // 4, data.dim)
    method = CLIPAdapter(variant="both", epochs=1)
    method.fit(data)
    assert method.trainable_parameters() == 2 * 2 * data.dim * (data.dim // 4)


def test_dassl_schedule_factors():
    # WARMUP_RECOUNT=True: the cosine restarts after the warm-up epoch
    assert dassl_epoch_factor(0, 200, 1, 1e-5 / 2e-3) == pytest.approx(5e-3)
    assert dassl_epoch_factor(1, 200, 1, 0.005) == 1.0
    assert dassl_epoch_factor(2, 200, 1, 0.005) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 200))
    )
    assert dassl_epoch_factor(101, 200, 1, 0.005) == pytest.approx(0.5)


def test_clip_adapter_lr_per_epoch_is_dassls(synthetic):
    # E = 4 epochs, one constant warm-up epoch at 1e-5, base lr 2e-3, stepped per epoch:
    # epoch 0: 1e-5; epoch e >= 1: 2e-3 * (1 + cos(pi (e - 1) / 4)) / 2
    data, _, _ = synthetic
    fit = CLIPAdapter(epochs=4).fit(data)
    lrs = [row["lr"] for row in fit.history]
    assert lrs == pytest.approx([1e-5, 2e-3, 2e-3 * (1 + 0.5**0.5) / 2, 1e-3], rel=1e-9)


def test_clip_adapter_drops_the_last_partial_batch(synthetic):
    # 160 images, batch 32 -> 5 steps; batch 48 -> 3 full steps (Dassl), not 4
    from fewclip.methods.training import batches_per_epoch

    assert batches_per_epoch(160, 48, drop_last=True) == 3
    assert batches_per_epoch(160, 48, drop_last=False) == 4
    assert batches_per_epoch(20, 32, drop_last=True) == 1  # fewer than a batch: kept
    data, _, _ = synthetic
    steps = []
    method = CLIPAdapter(epochs=1, batch_size=48, warmup_epochs=0)
    module = method.build(data)
    module.register_forward_pre_hook(lambda m, args: steps.append(args[0].shape[0]))
    method.build = lambda data, seed=0: module
    method.fit(data)
    train_batches = [n for n in steps if n != data.val_labels.shape[0]]
    assert train_batches == [48, 48, 48]
    assert CLIPAdapter().view_scale() == (0.08, 1.0)  # Dassl's crop scale


def test_clip_adapter_learns_and_is_deterministic(synthetic):
    data, test_f, test_y = synthetic
    zs = accuracy(zero_shot_logits(data, test_f), test_y)
    runs = []
    for _ in range(2):
        method = CLIPAdapter(alpha=0.6, epochs=40)
        fit = method.fit(data, seed=3)
        runs.append(method.logits(test_f))
        assert len(fit.history) == 40 and fit.best_epoch is not None
    assert torch.equal(runs[0], runs[1])
    assert accuracy(runs[0], test_y) > zs + 15


def test_clip_adapter_transfers_to_other_classes(synthetic):
    data, test_f, _ = synthetic
    method = CLIPAdapter(variant="both", epochs=5)
    method.fit(data)
    idx = torch.tensor([7, 2, 5])
    # a sub-list of the training classifier gives the matching columns of the logits
    sub = method.logits_for(test_f, data.classifiers["positive"][:, idx])
    assert torch.allclose(sub, method.logits(test_f)[:, idx], atol=1e-5)


def test_last_epoch_selection_keeps_the_final_state(synthetic):
    data, _, _ = synthetic
    fit = CLIPAdapter(epochs=6, selection="last").fit(data)
    assert fit.best_epoch == 5


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_fixed_c_equals_sklearn(synthetic):
    data, test_f, _ = synthetic
    method = LinearProbe(c_reg=0.5)
    method.fit(data)
    ref = fit_logistic(data.train_features.numpy(), data.train_labels.numpy(), 0.5, 1000, 0)
    expected = torch.from_numpy(ref.decision_function(test_f.numpy())).float()
    assert torch.allclose(method.logits(test_f), expected, atol=1e-5)
    assert method.trainable_parameters() == data.dim * data.num_classes + data.num_classes


def test_linear_probe_search_learns(synthetic):
    data, test_f, test_y = synthetic
    method = LinearProbe()
    fit = method.fit(data)
    zs = accuracy(zero_shot_logits(data, test_f), test_y)
    assert accuracy(method.logits(test_f), test_y) > zs + 15
    tried = {round(r["log10_c"], 6): r["val_acc"] for r in fit.history}
    chosen = round(math.log10(fit.chosen["c_reg"]), 6)
    assert fit.best_val_acc == pytest.approx(tried[chosen])
    # the old search, by name: stays in the coarse range, ties to the larger C
    old = LinearProbe(search="halving").fit(data)
    best = max(r["val_acc"] for r in old.history)
    assert 1e-6 <= old.chosen["c_reg"] <= 1e6
    ties = [r["log10_c"] for r in old.history if r["val_acc"] == best]
    assert math.log10(old.chosen["c_reg"]) == pytest.approx(max(ties))


def _lpclip_reference(acc, num_step=8):
    """CoOp's lpclip/linear_probe.py search, transcribed loop for loop (C -> val acc)."""
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [acc(c) for c in search_list]
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = None
    for _ in range(num_step):
        acc_left, acc_right = acc(c_left), acc(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


def test_lpclip_search_hand_cases():
    # flat val accuracy: coarse keeps 1e6 (first), then every round's tie goes left: 1e5
    assert lpclip_search(lambda c: 0.5, LinearProbe.Options.coarse) == pytest.approx(1e5)
    # a peak at log10 C = 0.3, worked by hand: coarse 1; rounds pick right, left, right,
    # left, left, right, right, left -> log10 C = 0.296875
    peak = lambda c: -((math.log10(c) - 0.3) ** 2)
    assert math.log10(lpclip_search(peak, LinearProbe.Options.coarse)) == pytest.approx(0.296875)
    steps = lambda c: math.floor(math.log10(c) * 3) % 5  # plateaus and ties
    for acc in (peak, steps, lambda c: -abs(math.log10(c) + 4.2), lambda c: 0.5):
        assert lpclip_search(acc, LinearProbe.Options.coarse) == pytest.approx(
            _lpclip_reference(acc), rel=1e-12
        )
    assert lpclip_search(peak, LinearProbe.Options.coarse, rounds=0) == 1.0


def test_linear_probe_keeps_the_fit_of_the_search(synthetic, monkeypatch):
    import fewclip.methods.linear_probe as lp

    data, test_f, _ = synthetic
    calls = []
    real = lp.fit_logistic
    monkeypatch.setattr(lp, "fit_logistic", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    method = LinearProbe()
    fit = method.fit(data)
    # every C of the search is fitted once (a round re-tries last round's winner, and the
    # coarse best comes back after a left win), and the chosen one is not fitted again
    distinct = {round(math.log10(c), 9) for c in calls}
    assert len(calls) == len(distinct) == len(fit.history) <= 7 + 2 * 8
    ref = real(data.train_features.numpy(), data.train_labels.numpy(), fit.chosen["c_reg"], 1000, 0)
    expected = torch.from_numpy(ref.decision_function(test_f.numpy())).float()
    assert torch.equal(method.logits(test_f), expected)  # a refit gives the same values


def test_linear_probe_missing_training_class():
    # class 2 has no training image: its column is -inf, never predicted
    data, test_f, _ = make_feature_data(num_classes=3, shots=4, dim=16, seed=1)
    keep = data.train_labels != 2
    data.train_features, data.train_labels = data.train_features[keep], data.train_labels[keep]
    method = LinearProbe(c_reg=1.0)
    method.fit(data)
    logits = method.logits(test_f)
    assert logits.shape == (test_f.shape[0], 3) and torch.isinf(logits[:, 2]).all()
    assert (logits.argmax(1) != 2).all()


def test_feature_methods_all_beat_zero_shot_on_synthetic(synthetic):
    data, test_f, test_y = synthetic
    zs = accuracy(zero_shot_logits(data, test_f), test_y)
    for name, options in [
        ("linear_probe", {}),
        ("clip_adapter", {"alpha": 0.6, "epochs": 60}),
        ("tip_adapter", {}),
        ("tip_adapter_f", {"epochs": 5}),
        ("dual_adapter", {"epochs": 5}),
    ]:
        method = get_method(name, **options)
        method.fit(data, seed=0)
        assert accuracy(method.logits(test_f), test_y) > zs + 10, name
