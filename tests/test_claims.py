"""The claims ledger: the shipped file loads and builds runs; claims on synthetic records
with a known answer get the right verdict (supported, contradicted, inconclusive), and a
claim without runs is reported as not run."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fewclip import claims
from fewclip.config import RunConfig
from fewclip.metrics import encode_correct, labels_digest

HEADER = ",".join(claims.COLUMNS)


def _row(cid, a, b, direction="greater", datasets="d", margin=0, a_opts="{}", b_opts="{}"):
    cells = [cid, "p", f"claim {cid}", "here", a, a_opts, b, b_opts, "{}", "few_shot", "16"]
    cells += [datasets, "accuracy", direction, str(margin), "rn", ""]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def _ledger(tmp_path, rows):
    path = tmp_path / "claims.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return claims.load(str(path))


def _record(method, seed, bits, dataset="d", options=None):
    bits = torch.as_tensor(np.asarray(bits, dtype=bool))
    labels = torch.zeros(bits.numel(), dtype=torch.long)
    logits = torch.stack([bits.float(), 1 - bits.float()], 1)
    opts = options or {}
    return {
        "run_key": f"{method}-{seed}-{dataset}-{json.dumps(opts)}",
        "status": "done",
        "method": method,
        "dataset": dataset,
        "protocol": "few_shot",
        "shots": 16,
        "seed": seed,
        "accuracy": bits.float().mean().item() * 100,
        "config": {
            "method": method,
            "dataset": dataset,
            "protocol": "few_shot",
            "shots": 16,
            "seed": seed,
            "options": opts,
        },  # fmt: skip
        "options": opts,
        "metrics": {
            "correct": encode_correct(logits, labels),
            "test_labels": labels_digest(labels),
            "test_images": bits.numel(),
        },
    }


@pytest.fixture(scope="module")
def frame():
    """Methods with a known truth on 600 shared test images, three seeds:
    ``good`` = ``base`` + 60 images (10 points better), ``bad`` = ``base`` - 60 images,
    ``same`` = ``base`` with 3 images flipped each way (no real difference)."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("d", "e"):
        for seed in (1, 2, 3):
            base = rng.random(600) < 0.5
            wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
            good, bad, same = base.copy(), base.copy(), base.copy()
            good[rng.choice(wrong, 60, replace=False)] = True
            bad[rng.choice(right, 60, replace=False)] = False
            same[rng.choice(wrong, 3, replace=False)] = True
            same[rng.choice(right, 3, replace=False)] = False
            # "grows": 10 points better than base on d, equal on e (an interaction)
            grows = good if dataset == "d" else base
            named = (("base", base), ("good", good), ("bad", bad), ("same", same))
            for name, bits in (*named, ("copy", base.copy())):
                rows.append(_record(name, seed, bits, dataset))
            rows.append(_record("grows", seed, grows, dataset))
    return pd.DataFrame(rows)


def test_known_answers_get_the_right_verdict(tmp_path, frame):
    ledger = _ledger(
        tmp_path,
        [
            _row("s", "good", "base"),
            _row("c", "bad", "base"),
            _row("i", "same", "base"),
            _row("pooled", "good", "base", datasets="d;e"),
            _row("nw", "same", "base", direction="not_worse", margin=2),
            _row("nw_bad", "bad", "base", direction="not_worse", margin=2),
            _row("inter", "grows", "base", direction="interaction_greater", datasets="d;e"),
            _row("inter_no", "good", "base", direction="interaction_greater", datasets="d;e"),
            _row("missing", "nothing", "base"),
            _row("opts", "good", "base", a_opts='{"x": 1}'),
            _row("copy", "copy", "base", direction="not_worse", margin=2),
            _row("copy_pooled", "copy", "base", datasets="d;e"),
        ],
    )
    noisy = frame[frame["method"] == "base"].copy()  # another claim's runs, with label noise
    noisy["config"] = [{**c, "label_noise": 0.25} for c in noisy["config"]]
    noisy["run_key"] = noisy["run_key"] + "-noisy"
    frame = pd.concat([frame, noisy], ignore_index=True)
    table = claims.evaluate(ledger, frame, n_boot=300).set_index("id")
    expected = {
        "s": "supported",
        "c": "contradicted",
        "i": "inconclusive at this scale",
        "pooled": "supported",
        "nw": "supported",
        "nw_bad": "contradicted",
        "inter": "supported",
        "inter_no": "inconclusive at this scale",
        "missing": "not run",
        "opts": "not run",  # a run with other options is another configuration
        # identical on every image of every seed: "supported" (not_worse) before, untested now
        "copy": "untested: A = B",
        "copy_pooled": "untested: A = B",
    }
    assert table["verdict"].to_dict() == expected
    assert table.loc["s", "effect"] == pytest.approx(10.0)
    assert table.loc["c", "effect"] == pytest.approx(-10.0)
    assert table.loc["s", "n_seeds"] == 3 and table.loc["s", "ci_low"] > 5
    assert table.loc["inter", "effect"] == pytest.approx(10.0)
    assert "no finished runs for side A" in table.loc["missing", "detail"]
    line = claims.summary_line(table.reset_index())
    assert line.startswith("12 claims: 4 supported, 2 contradicted, 2 inconclusive")
    assert "2 untested: A = B" in line
    assert table.loc["copy", "detail"].startswith("A and B give the same result")


def test_verdict_thresholds():
    assert claims.verdict(0.1, 3, "greater") == "supported"
    assert claims.verdict(-0.1, 3, "greater") == "inconclusive at this scale"
    assert claims.verdict(-3, -0.1, "greater") == "contradicted"
    assert claims.verdict(-0.9, 2, "not_worse", 1.0) == "supported"
    assert claims.verdict(-3, -1.1, "not_worse", 1.0) == "contradicted"
    assert claims.verdict(float("nan"), 1, "greater") == "not run"


def test_the_shipped_ledger_loads_and_builds_its_runs():
    ledger = claims.load()
    assert len(ledger) >= 16 and set(ledger["paper"]) == {
        "clip_adapter", "dual_adapter", "apex", "tomm"
    }  # fmt: skip
    base = RunConfig(data_root="/nowhere", progress=False)
    runs = claims.configs(ledger, base, seeds=[1, 2], backbones={"rn": "a", "vit": "b"})
    assert len(runs) == len({json.dumps(c.to_dict(), sort_keys=True) for c in runs})
    assert {c.seed for c in runs} == {1, 2} and {c.backbone for c in runs} == {"a", "b"}
    tomm = [c for c in runs if c.method == "tomm"]
    assert tomm and all(c.backbone == "b" and c.protocol == "base_to_new" for c in tomm)


def test_bad_ledgers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown direction"):
        _ledger(tmp_path, [_row("x", "a", "b", direction="bigger")])
    with pytest.raises(ValueError, match="not JSON"):
        _ledger(tmp_path, [_row("x", "a", "b", a_opts="{oops")])
