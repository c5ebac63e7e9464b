"""The coverage the reports state for the 95% interval of a paired difference
(:data:`fewclip.coverage.COVERAGE`) is what a simulation of 2,000 experiments measures
again, within 1.5 points; and the simulation's interval is the one ``paired_cells`` builds
from records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fewclip import coverage
from fewclip import evidence as ev
from fewclip.metrics import encode_correct, labels_digest


@pytest.mark.parametrize("seeds", [3, 5])
def test_stated_coverage_is_measured_again(seeds):
    got = coverage.simulate(seeds, trials=2000)
    assert got.trials == 2000
    assert abs(got.coverage - coverage.stated(seeds)) <= 0.015, got
    # the world is not degenerate: a real difference, intervals of a few points
    assert 1.0 < got.true_difference < 5.0 and 2.0 < got.mean_width < 20.0


def test_one_seed_covers_less_than_three():
    """One seed leaves the seed spread out of the interval: it must cover less."""
    assert coverage.stated(1) < coverage.stated(3)
    one = coverage.simulate(1, trials=200, rng_seed=3)
    three = coverage.simulate(3, trials=200, rng_seed=3)
    assert one.coverage < three.coverage


def test_the_sentence_names_the_seed_count():
    assert "At 3 seeds" in coverage.coverage_sentence(3)
    assert f"{coverage.stated(3):.0%}" in coverage.coverage_sentence(3)
    assert "was not measured" in coverage.coverage_sentence(7)


def _record(method, seed, bits):
    bits = torch.as_tensor(np.asarray(bits, dtype=bool))
    labels = torch.zeros(bits.numel(), dtype=torch.long)
    logits = torch.stack([bits.float(), 1 - bits.float()], 1)
    return {
        "run_key": f"{method}-{seed}",
        "status": "done",
        "method": method,
        "dataset": "d",
        "protocol": "few_shot",
        "shots": 16,
        "seed": seed,
        "accuracy": bits.float().mean().item() * 100,
        "config": {"method": method, "dataset": "d", "shots": 16, "seed": seed, "options": {}},
        "options": {},
        "metrics": {
            "correct": encode_correct(logits, labels),
            "test_labels": labels_digest(labels),
            "test_images": bits.numel(),
        },
    }


def test_simulated_interval_is_paired_cells_interval():
    rng = np.random.default_rng(5)
    a = [rng.random(250) < 0.6 for _ in range(3)]
    b = [rng.random(250) < 0.5 for _ in range(3)]
    frame = pd.DataFrame(
        [_record("a", s + 1, x) for s, x in enumerate(a)]
        + [_record("b", s + 1, x) for s, x in enumerate(b)]
    )
    (cell,) = ev.paired_cells(frame, "a", "b", on=["dataset"], n_boot=400)
    row = ev.cell_summary(cell)
    # the same bootstrap draws: paired_cells seeds its generator with 0
    low, high = coverage.paired_interval(a, b, n_boot=400, rng=np.random.default_rng(0))
    # records store accuracy in float32: equal to 1e-4 points
    assert (low, high) == pytest.approx((row["ci_low"], row["ci_high"]), abs=1e-4)
