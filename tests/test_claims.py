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
    # rows with their own seed count (noise-dominated) run on 1..10, the others on 1, 2
    assert {c.seed for c in runs} == set(range(1, 11)) and {c.backbone for c in runs} == {"a", "b"}
    counted = ledger[ledger["seeds"] > 0]
    assert len(counted) >= 10 and set(counted["seeds"]) == {10}
    plain = claims.configs(ledger[ledger["seeds"] == 0], base, [1, 2], {"rn": "a", "vit": "b"})
    assert {c.seed for c in plain} == {1, 2}
    flat = claims.configs(ledger, base, [1, 2], {"rn": "a", "vit": "b"}, row_seeds=False)
    assert {c.seed for c in flat} == {1, 2}
    tomm = [c for c in runs if c.method == "tomm"]
    assert tomm and all(c.backbone == "b" and c.protocol == "base_to_new" for c in tomm)


def test_bad_ledgers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown direction"):
        _ledger(tmp_path, [_row("x", "a", "b", direction="bigger")])
    with pytest.raises(ValueError, match="not JSON"):
        _ledger(tmp_path, [_row("x", "a", "b", a_opts="{oops")])


def _row_with(cid, a, b, *, delta="", paper_effect="", **kw):
    """A ledger row with the optional columns ``delta`` and ``paper_effect`` appended."""
    return _row(cid, a, b, **kw) + f",{delta},{paper_effect}"


def _ledger_with(tmp_path, rows):
    path = tmp_path / "claims.csv"
    path.write_text("\n".join([HEADER + ",delta,paper_effect", *rows]) + "\n")
    return claims.load(str(path))


def test_verdicts_near_their_thresholds():
    # each verdict on both sides of its line, by a hair
    assert claims.verdict(1e-9, 5, "greater") == "supported"
    assert claims.verdict(-1e-9, 5, "greater") == "inconclusive at this scale"
    assert claims.verdict(-5, -1e-9, "greater") == "contradicted"
    assert claims.verdict(-5, 1e-9, "greater") == "inconclusive at this scale"
    assert claims.verdict(-1.0 + 1e-9, 3, "not_worse", 1.0) == "supported"
    assert claims.verdict(-1.0 - 1e-9, 3, "not_worse", 1.0) == "inconclusive at this scale"
    # equivalence: the interval strictly inside (-delta, delta)
    assert claims.verdict(-1.9, 1.9, "greater", delta=2.0) == claims.NO_EFFECT
    assert claims.verdict(-2.1, 1.9, "greater", delta=2.0) == "inconclusive at this scale"
    assert claims.verdict(-1.9, 2.0, "greater", delta=2.0) == "inconclusive at this scale"
    # a decisive direction wins over equivalence (a small but real effect is supported)
    assert claims.verdict(0.1, 1.9, "greater", delta=2.0) == "supported"
    # without delta there is no equivalence verdict: -0.2 [-1.2, 0.8] stays inconclusive
    assert claims.verdict(-1.2, 0.8, "greater") == "inconclusive at this scale"


def test_the_paper_effect_places_the_interval():
    assert claims.versus_paper(1.0, 3.0, 4.03) == "smaller than the paper's effect"
    assert claims.versus_paper(1.0, 5.0, 4.03) == "consistent with the paper's effect"
    assert claims.versus_paper(4.5, 9.0, 4.03) == "larger than the paper's effect"
    assert claims.versus_paper(1.0, 3.0, float("nan")) == ""


def test_p_value_agrees_with_the_interval():
    from fewclip import evidence as ev

    # the interval excludes the line exactly when p < 0.05, for a t and a normal quantile
    for seed_std, seeds, v_img in ((2.0, 3, 0.3), (1.0, 5, 0.0), (0.0, 3, 1.0)):
        se, df = ev.se_and_df(seed_std, seeds, v_img)
        for effect in (0.5, 1.0, 2.0, 3.0, 5.0):
            low, high, _ = ev.combine_interval(effect, seed_std, seeds, v_img)
            p = claims.p_value(effect, se, df)
            assert (p < 0.05) == (low > 0), (effect, low, p)
    # hand-computed: se 1, normal, effect 1.96 -> p = 0.05
    assert claims.p_value(1.959963985, 1.0, float("inf")) == pytest.approx(0.05, abs=1e-9)
    # se from the two terms: sqrt(0.3 + 4/3); df = se^4 / ((4/3)^2 / 2)
    se, df = ev.se_and_df(2.0, 3, 0.3)
    assert se == pytest.approx((0.3 + 4 / 3) ** 0.5)
    assert df == pytest.approx(se**4 / ((4 / 3) ** 2 / 2))
    assert ev.se_and_df(float("nan"), 1, 0.25) == (0.5, float("inf"))


def test_holm_by_hand():
    # m = 4 tested (NaN ignored): sorted 0.01, 0.02, 0.03, 0.2 -> 0.04, 0.06, 0.06, 0.2
    got = claims.holm([0.03, 0.01, float("nan"), 0.2, 0.02])
    assert got[0] == pytest.approx(0.06) and got[1] == pytest.approx(0.04)
    assert np.isnan(got[2]) and got[3] == pytest.approx(0.2) and got[4] == pytest.approx(0.06)
    assert claims.holm([0.9, 0.8]) == [1.0, 1.0]


@pytest.fixture(scope="module")
def gate_frame():
    """Zero-shot at 50%, a trained baseline ``weak`` at 40%, ``strong`` at 60%, ``method``
    at 55% and ``tied`` within a point of ``strong``: 400 shared test images, three seeds."""
    rng = np.random.default_rng(1)
    truth = rng.permutation(400) / 400  # exact shares: truth < 0.4 is 40.0%
    rows = [_record("zero_shot", 1, truth < 0.5)]
    for seed in (1, 2, 3):
        noise = rng.random(400) < 0.01
        rows.append(_record("weak", seed, truth < 0.4))
        rows.append(_record("strong", seed, truth < 0.6))
        rows.append(_record("method", seed, truth < 0.55))
        rows.append(_record("tied", seed, (truth < 0.6) ^ noise))
    return pd.DataFrame(rows)


def test_a_baseline_below_zero_shot_withholds_the_verdict(tmp_path, gate_frame):
    ledger = _ledger_with(
        tmp_path,
        [
            _row_with("weak", "method", "weak"),  # would be "supported": B is a failed baseline
            _row_with("strong", "method", "strong"),  # B above zero-shot: a real contradiction
            _row_with("zs", "method", "zero_shot"),  # zero-shot itself is never gated
        ],
    )
    table = claims.evaluate(ledger, gate_frame, n_boot=200).set_index("id")
    assert table.loc["weak", "verdict"] == claims.GATED
    assert "d: B 40.0 below zero-shot 50.0 (accuracy)" in table.loc["weak", "detail"]
    assert table.loc["strong", "verdict"] == "contradicted"
    assert table.loc["zs", "verdict"] == "supported"
    assert table.loc["zs", "test_images"] == 400
    # the linear probe is exempt: below zero-shot is where the papers have it at low shots
    weak = gate_frame[gate_frame["method"] == "weak"]
    probe = pd.concat(
        [
            gate_frame,
            weak.assign(
                method="linear_probe",
                run_key=weak["run_key"] + "-probe",
                config=[dict(c, method="linear_probe") for c in weak["config"]],
            ),
        ]
    )
    ledger_probe = _ledger_with(tmp_path, [_row_with("probe", "method", "linear_probe")])
    row = claims.evaluate(ledger_probe, probe, n_boot=200).set_index("id").loc["probe"]
    assert row["verdict"] == "supported"
    assert row["detail"].startswith(claims.GATE_EXEMPT["linear_probe"])
    base = RunConfig(data_root="/nowhere", progress=False)
    assert claims.gate_configs(ledger_probe.iloc[0], base, seeds=[1]) == []
    # the gate's zero-shot runs are among the runs the ledger asks for
    runs = claims.configs(ledger.iloc[:1], base, seeds=[1, 2])  # the "weak" claim alone
    gate = [c for c in runs if c.method == "zero_shot"]
    assert len(gate) == 1 and gate[0].dataset == "d" and gate[0].shots == 16


def test_equivalence_holm_and_paper_columns(tmp_path, gate_frame):
    ledger = _ledger_with(
        tmp_path,
        [
            _row_with("eq", "tied", "strong", delta=3),  # < 1 point apart: no effect as large as 3
            _row_with("eq_wide", "tied", "strong", delta=0.2),  # bound too tight to decide
            _row_with("paper", "method", "zero_shot", paper_effect=12),  # +5 against +12
        ],
    )
    table = claims.evaluate(ledger, gate_frame, n_boot=200).set_index("id")
    assert table.loc["eq", "verdict"] == claims.NO_EFFECT
    assert table.loc["eq", "delta"] == 3.0 and table.loc["eq_wide", "delta"] == 0.2
    assert table.loc["eq_wide", "verdict"] == "inconclusive at this scale"
    assert table.loc["paper", "verdict"] == "supported"
    assert table.loc["paper", "vs_paper"] == "smaller than the paper's effect"
    assert table.loc["paper", "effect"] == pytest.approx(5.0)
    assert table.loc["paper", "se"] > 0 and table.loc["paper", "n_seeds"] == 3
    assert table.loc["paper", "coverage"] == pytest.approx(claims.coverage.stated(3))
    # one paper, three tests: p_holm >= p, and a decisive verdict survives Holm here
    assert (table["p_holm"] >= table["p"] - 1e-12).all()
    assert table.loc["paper", "verdict_holm"] == "supported"


def test_holm_turns_a_marginal_verdict_inconclusive():
    table = pd.DataFrame(
        {
            "paper": ["p", "p", "p", "q"],
            "p": [0.03, 0.04, 0.5, 0.03],
            "verdict": ["supported", "contradicted", "inconclusive at this scale", "supported"],
        }
    )
    out = claims.with_holm(table)
    # within paper p: 0.03 * 3 = 0.09, 0.04 * 2 = 0.08 -> 0.09: both lose; q alone keeps it
    assert out["verdict_holm"].tolist() == [
        claims.HOLM_INCONCLUSIVE,
        claims.HOLM_INCONCLUSIVE,
        "inconclusive at this scale",
        "supported",
    ]


def test_contradicted_interaction(tmp_path):
    """(A - B on hard) - (A - B on easy) clearly negative: the larger gain is on the easy
    task, so an interaction claim 'helps more on hard' is contradicted."""
    rng = np.random.default_rng(2)
    rows = []
    for dataset, gain in (("hard", 0.0), ("easy", 0.15)):
        truth = rng.permutation(500) / 500
        for seed in (1, 2, 3):
            rows.append(_record("b", seed, truth < 0.4, dataset))
            rows.append(_record("a", seed, truth < 0.4 + gain, dataset))
    ledger = _ledger(
        tmp_path, [_row("x", "a", "b", direction="interaction_greater", datasets="hard;easy")]
    )
    row = claims.evaluate(ledger, pd.DataFrame(rows), n_boot=200).iloc[0]
    assert row["effect"] == pytest.approx(-15.0, abs=0.5)
    assert row["verdict"] == "contradicted"


def test_optional_columns_are_checked(tmp_path):
    with pytest.raises(ValueError, match="delta must be positive"):
        _ledger_with(tmp_path, [_row_with("x", "a", "b", delta=-1)])
    with pytest.raises(ValueError, match="paper_effect must be a number"):
        _ledger_with(tmp_path, [_row_with("x", "a", "b", paper_effect="big")])


def test_a_contrast_tests_robustness_as_a_smaller_drop(tmp_path):
    """(A - B at label noise 0.1) - (A - B at 0): A loses 2 points to noise, B loses 12, so
    A's advantage grows by 10 under noise: supported as an interaction, even though A is
    below B on clean labels (a level test would call that a loss)."""
    perm = np.random.default_rng(4).permutation(500) / 500
    rows = []
    for noise, a_share, b_share in ((0.0, 0.50, 0.55), (0.1, 0.48, 0.43)):
        for seed in (1, 2, 3):
            for method, share in (("a", a_share), ("b", b_share)):
                r = _record(method, seed, perm < share)
                r["config"] = {**r["config"], "label_noise": noise}
                r["run_key"] += f"-{noise}"
                rows.append(r)
    path = tmp_path / "claims.csv"
    row = _row("robust", "a", "b", direction="interaction_greater")
    path.write_text(HEADER + ",contrast\n" + row + ',"{""label_noise"": [0.1, 0.0]}"\n')
    ledger = claims.load(str(path))
    got = claims.evaluate(ledger, pd.DataFrame(rows), n_boot=200).iloc[0]
    assert got["effect"] == pytest.approx(10.0, abs=1e-4)
    assert got["verdict"] == "supported"
    # the runs it asks for: both sides at both noise levels
    base = RunConfig(data_root="/nowhere", progress=False)
    runs = claims.configs(ledger, base, seeds=[1])
    assert sorted((c.method, c.label_noise) for c in runs if c.method != "zero_shot") == [
        ("a", 0.0), ("a", 0.1), ("b", 0.0), ("b", 0.1)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="contrast must name one RunConfig field"):
        path.write_text(HEADER + ",contrast\n" + row + ',"{""label_noise"": [0.1]}"\n')
        claims.load(str(path))


def test_transfer_mean_pools_the_target_datasets(tmp_path):
    """A domain-generalisation claim on the mean over target datasets: A beats B by 10
    points on one target and 0 on the other, so by 5 on their mean."""
    perm = np.random.default_rng(6).permutation(400) / 400
    rows = []
    for seed in (1, 2, 3):
        for method, shares in (("a", (0.6, 0.5)), ("b", (0.5, 0.5))):
            r = _record(method, seed, perm < 0.5)
            detail = {}
            for target, share in zip(("t1", "t2"), shares, strict=True):
                bits = torch.as_tensor(perm < share)
                labels = torch.zeros(bits.numel(), dtype=torch.long)
                logits = torch.stack([bits.float(), 1 - bits.float()], 1)
                detail[target] = {
                    "correct": encode_correct(logits, labels),
                    "test_labels": labels_digest(labels),
                }
            r["metrics"] = {
                **r["metrics"],
                "transfer": {"t1": shares[0] * 100, "t2": shares[1] * 100},
                "transfer_detail": detail,
            }
            rows.append(r)
    path = tmp_path / "claims.csv"
    path.write_text(
        "\n".join([HEADER, _row("dg", "a", "b").replace(",accuracy,", ",transfer_mean,")])
    )
    got = claims.evaluate(claims.load(str(path)), pd.DataFrame(rows), n_boot=200).iloc[0]
    assert got["effect"] == pytest.approx(5.0, abs=1e-4)
    assert got["verdict"] == "supported"
    assert got["test_images"] == 800  # both targets' images


def test_every_shipped_claim_has_a_paper_scale_configuration():
    ledger = claims.load()
    paper, backbones = claims.at_scale(ledger, "paper")
    assert len(paper) == len(ledger) and not paper.attrs["no_paper_scale"]
    assert set(backbones) <= {"RN50", "ViT-B-16"}
    coop_eleven = {"imagenet", "caltech101", "dtd", "eurosat", "ucf101", "food101", "sun397"}
    assert all(set(ds) & (coop_eleven | {"oxford_pets"}) for ds in paper["datasets"])
    # the affordable schedules of the embedded ledger give way to the official ones
    coop = paper[paper["id"] == "clip_adapter.beats_prompt_tuning"].iloc[0]
    assert coop["b_options"] == {} and coop["shots"] == 16 and coop["encoder"] == "RN50"
    base = RunConfig(data_root="/nowhere", pretrained="openai", progress=False)
    runs = claims.configs(paper, base, seeds=[1], backbones=backbones)
    assert {c.backbone for c in runs} == {"RN50", "ViT-B-16"}
    assert {c.dataset for c in runs} >= {"imagenet", "eurosat"}
    embedded, none = claims.at_scale(ledger, "embedded")
    assert embedded.equals(ledger) and none == {}
    with pytest.raises(ValueError, match="unknown ledger profile"):
        claims.at_scale(ledger, "huge")


def test_bad_paper_scale_is_refused(tmp_path):
    path = tmp_path / "claims.csv"
    row = _row("x", "a", "b")
    path.write_text(HEADER + ",paper_scale\n" + row + ',"{""backbone"": ""RN50""}"\n')
    with pytest.raises(ValueError, match="needs at least a backbone and datasets"):
        claims.load(str(path))
    path.write_text(HEADER + ",paper_scale\n" + row + ',"{""epochs"": 3}"\n')
    with pytest.raises(ValueError, match="unknown key"):
        claims.load(str(path))


def _b2n_record(method, seed, base, new, labels):
    """A base-to-new record whose new-class images carry their class ``labels``."""
    from fewclip.metrics import encode_labels

    rec = _record(method, seed, base)
    rec["protocol"] = rec["config"]["protocol"] = "base_to_new"
    new_rec = _record(method, seed, new)["metrics"]
    new_rec.update(test_labels=labels_digest(labels), labels=encode_labels(labels))
    rec["metrics"] = {"base": rec["metrics"], "new": new_rec}
    b, n = base.mean() * 100, new.mean() * 100
    rec.update(
        base_accuracy=b, new_accuracy=n, hm=2 * b * n / (b + n), accuracy=2 * b * n / (b + n)
    )
    return rec


def test_base_to_new_claims_resample_new_classes_by_class(tmp_path):
    """A's gain on new classes is +50 points on half of the 8 classes and -30 on the other
    half (mean +10): the image bootstrap calls it supported, the class bootstrap (a draw of
    8 classes may hold mostly the losing ones) does not."""
    rng = np.random.default_rng(5)
    labels = torch.arange(8).repeat_interleave(50)
    gain = np.where(np.arange(8) < 4, 0.5, -0.3)[labels.numpy()]
    base = rng.random(200) < 0.7
    rows = []
    for seed in (1, 2, 3):
        u = rng.random(labels.numel())
        b_new = u < 0.4 + 0.02 * seed
        a_new = u < 0.4 + 0.02 * seed + gain  # the same draw: A's extra images exactly
        rows += [
            _b2n_record("a", seed, base, a_new, labels),
            _b2n_record("b", seed, base, b_new, labels),
        ]
    row = _row("new", "a", "b").replace(",few_shot,", ",base_to_new,")
    ledger = _ledger(tmp_path, [row.replace(",accuracy,", ",new_accuracy,")])
    got = claims.evaluate(ledger, pd.DataFrame(rows), n_boot=400).iloc[0]
    assert got["effect"] == pytest.approx(10.0, abs=2.0)
    assert "new classes resampled by class" in got["detail"]
    assert got["verdict"] == "inconclusive at this scale" and got["ci_low"] < -5
    # the same records scored image by image (as records without labels are): supported
    for r in rows:
        del r["metrics"]["new"]["labels"]
    plain = claims.evaluate(ledger, pd.DataFrame(rows), n_boot=400).iloc[0]
    assert plain["verdict"] == "supported" and plain["effect"] == got["effect"]


def test_headline_rows_quote_the_papers_effect_from_paper_results():
    """The paper's effect of each headline row is the difference of the published numbers
    in data/paper_results.csv (APEX Tables 2 and 3, CLIP-Adapter's few-shot curve)."""
    from fewclip.notebook import resolve

    ledger = claims.load().set_index("id")
    p = pd.read_csv(resolve("data/paper_results.csv"))
    apex = p[p["paper"] == "apex"]
    hm = apex[(apex["dataset"] == "average") & (apex["metric"] == "hm")].set_index("method")
    for m in ("zero_shot", "clip_adapter", "cocoop", "prograd", "maple"):
        row = ledger.loc[f"apex.beats_{m}_hm"]
        want = hm.loc["apex", "value"] - hm.loc[m, "value"]
        assert row["paper_effect"] == pytest.approx(want, abs=0.005) and row["value"] == "hm"
    targets = apex[(apex["protocol"] == "cross_dataset") & (apex["dataset"] != "imagenet")]
    mean = targets.groupby("method")["value"].mean()
    for m in ("clip_adapter", "cocoop", "prograd", "maple"):
        row = ledger.loc[f"apex.cross_dataset_beats_{m}"]
        assert row["paper_effect"] == pytest.approx(mean["apex"] - mean[m], abs=0.005)
        assert row["protocol"] == "cross_dataset" and row["config"]["eval_datasets"]
    few = p[p["protocol"] == "few_shot"]
    ours = few[(few["paper"] == "clip_adapter") & (few["method"] == "clip_adapter")]
    ours = ours.pivot_table(index="dataset", columns="shots", values="value")
    zero = few[(few["paper"] == "tip_adapter") & (few["method"] == "zero_shot")]
    zero = zero.set_index("dataset")["value"]
    coop = few[(few["paper"] == "ape") & (few["method"] == "coop")]
    coop = coop.pivot_table(index="dataset", columns="shots", values="value")
    for k in (1, 2, 4, 8, 16):
        row = ledger.loc[f"clip_adapter.curve_beats_zero_shot_k{k}"]
        assert row["shots"] == k and len(row["datasets"]) >= 3
        assert row["paper_effect"] == pytest.approx((ours[k] - zero).mean(), abs=0.005)
        coop_row = (
            "clip_adapter.beats_prompt_tuning" if k == 16 else f"clip_adapter.curve_beats_coop_k{k}"
        )
        assert ledger.loc[coop_row, "b_options"] == {}  # CoOp at its official schedule
        want = (ours[k] - coop[k]).mean()
        assert ledger.loc[coop_row, "paper_effect"] == pytest.approx(want, abs=0.005)
        assert ledger.loc[f"clip_adapter.curve_beats_linear_probe_k{k}", "shots"] == k
    # DualAdapter against APE-T, its base, pooled over tasks (at 16 shots)
    assert len(ledger.loc["dual_adapter.beats_ape_t", "datasets"]) >= 3


def _cost_record(method, seed, dataset, params, seconds):
    record = _record(method, seed, np.ones(4, dtype=bool), dataset)
    return {**record, "trainable_params": params, "fit_seconds": seconds}


def test_a_cost_claim_is_a_ratio_against_its_margin(tmp_path):
    """A fits in 2.0x, 2.2x and 1.8x B's time on d, exactly twice on e: the ratio is the
    geometric mean, log-t over seeds; A trains 5 parameters to B's 16 at every seed."""
    times = {1: (2.0, 2.0), 2: (2.2, 2.0), 3: (1.8, 2.0)}  # (A / B on d, A / B on e)
    rows = []
    for seed, (on_d, on_e) in times.items():
        for dataset, ratio in (("d", on_d), ("e", on_e)):
            rows.append(_cost_record("slow", seed, dataset, 5, 0.5 * ratio))
            rows.append(_cost_record("base", seed, dataset, 16, 0.5))
    frame = pd.DataFrame(rows)

    def row(cid, value, margin):
        return _row(cid, "slow", "base", "ratio_at_most", "d;e", margin).replace(
            ",accuracy,", f",{value},"
        )

    ledger = _ledger(
        tmp_path,
        [
            row("params", "trainable_params", 1),
            row("time_ok", "fit_seconds", 3),
            row("time_bad", "fit_seconds", 1.5),
            row("time_edge", "fit_seconds", 2),
        ],
    )
    table = claims.evaluate(ledger, frame).set_index("id")
    # parameters: exactly 5 / 16 at every seed, a point interval, below 1x
    assert table.loc["params", "effect"] == pytest.approx(5 / 16)
    assert table.loc["params", "ci_low"] == table.loc["params", "ci_high"] == pytest.approx(5 / 16)
    assert table.loc["params", "verdict"] == "supported"
    # time: per seed the geometric mean of the two datasets' ratios, then over seeds
    logs = np.log([np.sqrt(d * e) for d, e in times.values()])
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    for cid in ("time_ok", "time_bad", "time_edge"):
        assert table.loc[cid, "effect"] == pytest.approx(np.exp(logs.mean()))
        assert table.loc[cid, "ci_low"] == pytest.approx(np.exp(logs.mean() - half))
        assert table.loc[cid, "ci_high"] == pytest.approx(np.exp(logs.mean() + half))
        assert table.loc[cid, "df"] == 2 and table.loc[cid, "n_seeds"] == 3
    assert table.loc["time_ok", "ci_high"] < 3 and table.loc["time_bad", "ci_low"] > 1.5
    assert table.loc["time_ok", "verdict"] == "supported"
    assert table.loc["time_bad", "verdict"] == "contradicted"
    assert table.loc["time_edge", "verdict"] == "inconclusive at this scale"
    # p on the log scale agrees with the interval; no zero-shot gate and no test images
    assert table.loc["time_ok", "p"] < 0.05 and table.loc["time_edge", "p"] > 0.05
    assert np.isnan(table.loc["time_ok", "test_images"])
    assert table.loc["time_ok", "value"] == "fit_seconds (ratio A / B)"
    assert claims.gate_configs(ledger.iloc[1].to_dict(), RunConfig(), [1]) == []
    assert claims.comparison(ledger.iloc[1].to_dict()).startswith("fit_seconds: slow / base <= 3")


def test_cost_claims_are_refused_unless_they_compare_a_cost_as_a_ratio(tmp_path):
    ratio = _row("x", "a", "b", "ratio_at_most", "d", 2)
    with pytest.raises(ValueError, match="compares a ratio of 'accuracy'"):
        _ledger(tmp_path, [ratio])
    with pytest.raises(ValueError, match="positive margin"):
        _ledger(tmp_path, [_row("x", "a", "b", "ratio_at_most", "d", 0).replace(
            ",accuracy,", ",fit_seconds,")])  # fmt: skip
    with pytest.raises(ValueError, match="as a difference"):
        _ledger(tmp_path, [_row("x", "a", "b").replace(",accuracy,", ",fit_seconds,")])


def test_a_row_with_its_own_seed_count_runs_and_reads_exactly_those_seeds(tmp_path, frame):
    assert claims.claim_seeds({"seeds": 5}, [1, 2]) == [1, 2, 3, 4, 5]
    assert claims.claim_seeds({"seeds": 0}, [3, 1]) == [3, 1]
    assert claims.claim_seeds({"seeds": 2}, [1, 2, 3]) == [1, 2, 3]  # never fewer
    path = tmp_path / "claims.csv"
    rows = [_row("two", "good", "base") + ",,,,,", _row("three", "good", "base") + ",,,,,3"]
    path.write_text("\n".join([HEADER + ",delta,paper_effect,contrast,paper_scale,seeds", *rows]))
    ledger = claims.load(str(path))
    runs = claims.configs(ledger, RunConfig(data_root="/nowhere", progress=False), [1, 2])
    assert sorted({(c.method, c.seed) for c in runs}) == [
        ("base", 1), ("base", 2), ("base", 3), ("good", 1), ("good", 2), ("good", 3),
        ("zero_shot", 1),  # the gate's, on the first seed
    ]  # fmt: skip
    # the frame holds seeds 1-3 of both: each claim reads its own seeds, not whatever is there
    table = claims.evaluate(ledger, frame, n_boot=200, seeds=[1, 2]).set_index("id")
    assert table.loc["two", "n_seeds"] == 2 and table.loc["three", "n_seeds"] == 3
    flat = claims.evaluate(ledger, frame, n_boot=200, seeds=[1, 2], row_seeds=False)
    assert list(flat["n_seeds"]) == [2, 2]
    assert list(claims.evaluate(ledger, frame, n_boot=200)["n_seeds"]) == [3, 3]
    path.write_text("\n".join([HEADER + ",seeds", _row("one", "good", "base") + ",1"]))
    with pytest.raises(ValueError, match="seeds must be an integer of at least 2"):
        claims.load(str(path))


def test_two_checkpoints_verdicts_are_compared_claim_by_claim():
    def table(verdicts):
        return pd.DataFrame(
            {
                "id": list(verdicts),
                "effect": [1.0] * len(verdicts),
                "ci_low": [0.5] * len(verdicts),
                "ci_high": [1.5] * len(verdicts),
                "verdict": list(verdicts.values()),
            }
        )

    first = table(
        {
            "same": "supported",
            "flip": "supported",
            "half": "contradicted",
            "neither": "inconclusive at this scale",
            "gone": "not run",
            "extra": "supported",
        }
    )
    second = table(
        {
            "same": "supported",
            "flip": "contradicted",
            "half": "inconclusive at this scale",
            "neither": claims.NO_EFFECT,
            "gone": "supported",
            "new": "supported",  # not in the first table
        }
    )
    got = claims.agreement(first, second).set_index("id")["agreement"].to_dict()
    assert got == {
        "same": claims.AGREE,
        "flip": claims.DISAGREE,
        "half": claims.PARTLY,
        "neither": claims.NEITHER,
        "gone": claims.NOT_COMPARED,
        "new": claims.NOT_COMPARED,
    }
    shown = claims.agreement(first, second).set_index("id")
    assert shown.loc["same", "ci_second"] == "[0.50, 1.50]"
    assert shown.loc["new", "verdict_first"] == "not run"
