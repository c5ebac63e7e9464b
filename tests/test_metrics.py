"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from fewclip.metrics import (
    accuracy,
    class_separability,
    harmonic_mean,
    per_class_accuracy,
    relative_transfer_difficulty,
)


def test_accuracy_and_per_class():
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 0], [0, 0, 5]])
    labels = torch.tensor([0, 1, 1, 0])  # right, right, wrong, wrong
    assert accuracy(logits, labels) == 50.0
    per = per_class_accuracy(logits, labels, 3)
    assert per[:2].tolist() == [50.0, 50.0] and math.isnan(per[2])


def test_harmonic_mean():
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 50.0) == 50.0


def test_relative_transfer_difficulty():
    assert relative_transfer_difficulty(10, 10.0) == pytest.approx(1.0)  # chance
    assert relative_transfer_difficulty(100, 50.0) == pytest.approx(0.02)
    assert relative_transfer_difficulty(4, 0.0) == math.inf


def test_class_separability_hand_case():
    # class 0: e1 and (e1 + e2)/sqrt2; class 1: e2
    s = 1 / math.sqrt(2)
    f = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    out = class_separability(f, y)
    assert out["intra"] == pytest.approx(s)  # the one same-class pair
    assert out["inter"] == pytest.approx((0.0 + s) / 2)  # e1.e2 = 0, (e1+e2)/sqrt2 . e2 = s
    assert out["ratio"] == pytest.approx(2.0) and out["inverse"] == pytest.approx(0.5)


def test_class_separability_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=-1)
    y = torch.randint(0, 4, (30,), generator=g)
    sim = f @ f.T
    same = (y[:, None] == y[None, :]) & ~torch.eye(30, dtype=torch.bool)
    diff = y[:, None] != y[None, :]
    out = class_separability(f, y)
    assert out["intra"] == pytest.approx(sim[same].mean().item(), abs=1e-5)
    assert out["inter"] == pytest.approx(sim[diff].mean().item(), abs=1e-5)
    with pytest.raises(ValueError):
        class_separability(f[:1], y[:1])
