"""Tip-Adapter and Tip-Adapter-F on hand cases and synthetic features."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from synthetic import make_feature_data

from fewclip.methods.base import accuracy
from fewclip.methods.search import grid_search_loop, linear_grid
from fewclip.methods.tip_adapter import TIP_DEFAULTS, TipAdapter, TipAdapterF, TipCache


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_data(num_classes=10, shots=8, dim=64, seed=0)


def zero_shot_accuracy(data, test_f, test_y) -> float:
    return accuracy(data.logit_scale * test_f @ data.classifiers["positive"], test_y)


def test_logits_hand_case():
    # s = 10, W = I, keys e1 (class 0) and e2 (class 1); f = e1, beta = 2, alpha = 0.5
    cache = TipCache(torch.eye(2), torch.eye(2), torch.eye(2), logit_scale=10.0)
    f = torch.tensor([[1.0, 0.0]])
    # affinities (1, 0): cache logits (exp(0), exp(-2)); clip logits (10, 0)
    expected = torch.tensor([[10 + 0.5 * 1.0, 0.5 * math.exp(-2)]])
    assert torch.allclose(cache(f, beta=2.0, alpha=0.5), expected)


def test_alpha_zero_is_zero_shot(synthetic):
    data, test_f, _ = synthetic
    method = TipAdapter(search=False)
    method.fit(data)
    zero_shot = data.logit_scale * test_f @ data.classifiers["positive"]
    assert torch.allclose(method.logits(test_f, alpha=0.0), zero_shot)
    assert torch.equal(method.module.keys, data.cache_keys)  # view-averaged, normalised


def test_search_equals_the_official_loop(synthetic):
    data, _, _ = synthetic
    method = TipAdapter()
    fit = method.fit(data)
    module = method.module
    terms = module.terms(data.val_features)
    betas, alphas = method.grids(data)
    reference = grid_search_loop(
        lambda b: module.components(terms, b), module.combine, data.val_labels, betas, alphas
    )
    assert (fit.chosen["beta"], fit.chosen["alpha"]) == (reference.beta, reference.alpha)
    assert fit.chosen["search_val_acc"] == reference.accuracy


def test_grids_follow_the_official_configs_and_the_scale(synthetic):
    data, _, _ = synthetic
    imagenet = TIP_DEFAULTS["imagenet"]
    data100 = dataclasses.replace(data, logit_scale=100.0)
    betas, alphas = TipAdapter(dataset="imagenet").grids(data100)
    assert betas == linear_grid(0.1, imagenet.beta_max, 200)
    assert alphas == linear_grid(0.1, imagenet.alpha_max, 20)
    # s = 30: beta's grid and initial value scaled by 0.3, alpha's kept
    method = TipAdapter(dataset="imagenet")
    betas30, alphas30 = method.grids(data)
    assert betas30 == pytest.approx([0.3 * b for b in betas]) and alphas30 == alphas
    assert method._inits(data) == pytest.approx((0.3 * 1, 1.17))
    assert TipAdapter(dataset="imagenet", beta_scale=1.0).grids(data) == (betas, alphas)
    assert TipAdapter(alpha_scale=2.0).grids(data)[1] == [
        2 * a for a in TipAdapter().grids(data)[1]
    ]


def test_tip_adapter_beats_zero_shot(synthetic):
    data, test_f, test_y = synthetic
    method = TipAdapter()
    method.fit(data)
    assert accuracy(method.logits(test_f), test_y) > zero_shot_accuracy(data, test_f, test_y) + 15
    assert method.trainable_parameters() == 0


def test_tip_adapter_f_trains_keys_and_beats_zero_shot(synthetic):
    data, test_f, test_y = synthetic
    method = TipAdapterF()  # the official settings: 20 epochs, lr 1e-3
    fit = method.fit(data, seed=0)
    assert len(fit.history) == 20 and fit.best_epoch is not None
    assert method.trainable_parameters() == data.cache_keys.numel()
    assert not torch.allclose(method.module.keys, data.cache_keys)
    assert accuracy(method.logits(test_f), test_y) > zero_shot_accuracy(data, test_f, test_y) + 15


def test_tip_adapter_f_same_seed_same_result(synthetic):
    data, test_f, _ = synthetic
    runs = []
    for _ in range(2):
        method = TipAdapterF(epochs=3, lr=1e-2)
        fit = method.fit(data, seed=3)
        runs.append((fit.chosen, fit.history, method.logits(test_f)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown option"):
        TipAdapter(epochs=3)  # only Tip-Adapter-F trains
    with pytest.raises(RuntimeError, match="fit"):
        TipAdapter().logits(torch.zeros(1, 4))
