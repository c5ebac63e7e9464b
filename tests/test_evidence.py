"""fewclip.evidence on known cases: interval formulas, the bootstrap against its closed
form, coverage, pairing, grouping (never averaging two configurations), duplicates, and the
per-image correctness the runner stores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from fewclip import evidence as ev
from fewclip.metrics import (
    decode_correct,
    decode_labels,
    encode_correct,
    encode_labels,
    labels_digest,
)


def _encode(bits: np.ndarray, labels: torch.Tensor | None = None) -> dict:
    bits = torch.as_tensor(np.asarray(bits, dtype=bool))
    labels = torch.zeros(bits.numel(), dtype=torch.long) if labels is None else labels
    logits = torch.stack([bits.float(), 1 - bits.float()], 1)  # class 0 right where bit set
    return {
        "correct": encode_correct(logits, labels),
        "test_labels": labels_digest(labels),
        "test_images": bits.numel(),
    }


def record(method, seed, bits, options=None, variant="", run_key=None, created="2026-01-01"):
    bits = np.asarray(bits, dtype=bool)
    return {
        "run_key": run_key or f"{method}-{seed}-{options}-{variant}",
        "created_at": created,
        "status": "done",
        "method": method,
        "variant": variant,
        "dataset": "d",
        "protocol": "few_shot",
        "shots": 16,
        "seed": seed,
        "accuracy": bits.mean() * 100,
        "config": {
            "method": method,
            "dataset": "d",
            "shots": 16,
            "seed": seed,
            "options": options or {},
            "variant": variant,
            "data_root": "/x",
        },  # fmt: skip
        "options": options or {},
        "metrics": _encode(bits),
    }


def test_correctness_codec_round_trips():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1000):
        bits = rng.random(n) < 0.5
        enc = _encode(bits)
        assert enc["correct"].startswith(f"{n}:")
        np.testing.assert_array_equal(decode_correct(enc["correct"]), bits)
    assert len(_encode(np.ones(6000))["correct"]) < 1100  # compact: ~N/6 characters


def test_seeds_only_interval_is_the_t_interval():
    out = ev.mean_interval([60.0, 62.0, 64.0])
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert out["mean"] == 62.0 and out["std"] == pytest.approx(2.0)
    assert out["ci_low"] == pytest.approx(62 - half) and out["ci_high"] == pytest.approx(62 + half)
    assert "seeds only" in out["interval"]


def test_one_seed_bootstrap_matches_the_binomial_variance():
    rng = np.random.default_rng(1)
    bits = rng.random(2000) < 0.7
    p = bits.mean()
    out = ev.mean_interval([p * 100], [bits], n_boot=4000)
    closed = p * (1 - p) / bits.size * 100**2
    assert out["v_img"] == pytest.approx(closed, rel=0.1)
    assert math.isnan(out["std"]) and "one seed" in out["interval"]
    half = out["ci_high"] - out["mean"]
    assert half == pytest.approx(1.96 * math.sqrt(out["v_img"]), rel=1e-3)  # normal quantile


def test_seed_and_image_terms_add_up():
    rng = np.random.default_rng(2)
    bits = [rng.random(500) < p for p in (0.5, 0.6, 0.7)]
    values = [b.mean() * 100 for b in bits]
    out = ev.mean_interval(values, bits, n_boot=4000)
    x = np.mean(bits, axis=0)  # per-image mean over seeds (images shared)
    v_closed = x.var() / x.size * 100**2
    assert out["v_img"] == pytest.approx(v_closed, rel=0.1)
    s2 = np.var(values, ddof=1)
    assert out["se"] == pytest.approx(math.sqrt(out["v_img"] + s2 / 3))
    seed_var = s2 / 3
    df = out["se"] ** 4 / (seed_var**2 / 2)
    assert out["ci_high"] - out["mean"] == pytest.approx(stats.t.ppf(0.975, df) * out["se"])


def test_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(3)
    hits, trials = 0, 300
    for _ in range(trials):
        ps = 0.6 + 0.03 * rng.standard_normal(3)  # seed effect, true mean 0.6
        bits = [rng.random(300) < p for p in ps]
        out = ev.mean_interval([b.mean() * 100 for b in bits], bits, n_boot=200)
        hits += out["ci_low"] <= 60.0 <= out["ci_high"]
    assert 0.88 <= hits / trials <= 0.995


def test_paired_difference_cancels_shared_images():
    rng = np.random.default_rng(4)
    rows, pairs = [], []
    for seed in (1, 2, 3):
        a = rng.random(400) < 0.6
        b = a.copy()
        b[rng.choice(np.flatnonzero(a), 12, replace=False)] = False  # B loses 12 of A's
        rows += [record("a", seed, a), record("b", seed, b)]
        pairs.append({"_a": a, "_b": b})
    frame = pd.DataFrame(rows)
    diff = ev.paired_difference(frame, a="a", b="b", on=["dataset"])
    assert len(diff) == 1
    row = diff.iloc[0]
    assert row["diff"] == pytest.approx(3.0) and row["std"] == pytest.approx(0.0)
    assert row["ci_low"] > 0  # paired: a 3-point gain on shared images is clear
    # seed spread 0: the half-width is 1.96 sd of the mean per-image difference
    x = np.mean([r["_a"] ^ r["_b"] for r in pairs], axis=0)  # per image, over seeds
    assert (row["ci_high"] - row["diff"]) == pytest.approx(
        1.96 * math.sqrt(x.var() / x.size) * 100, rel=0.15
    )
    # the unpaired intervals of the two overlap: only pairing shows the difference
    s = ev.summarize(frame, by=["label"]).set_index("label")
    assert s.loc["b", "ci_high"] > s.loc["a", "ci_low"]


def test_paired_difference_pairs_only_common_seeds_and_broadcasts_zero_shot():
    rng = np.random.default_rng(5)
    bits = {s: rng.random(100) < 0.5 for s in (1, 2, 3)}
    zs = rng.random(100) < 0.3
    rows = [record("a", s, bits[s]) for s in (1, 2, 3)] + [record("b", 2, bits[2])]
    rows += [record("zero_shot", 1, zs)]
    frame = pd.DataFrame(rows)
    d = ev.paired_difference(frame, a="a", b="b", on=["dataset"])
    assert d.iloc[0]["seeds"] == "2" and d.iloc[0]["diff"] == 0.0
    z = ev.paired_difference(frame, a="a", b="zero_shot", on=["dataset"])
    assert z.iloc[0]["n_seeds"] == 3
    expected = np.mean([bits[s].mean() for s in (1, 2, 3)]) * 100 - zs.mean() * 100
    assert z.iloc[0]["diff"] == pytest.approx(expected)


def test_seed_means_average_seeds_never_configurations():
    # seeds 1, 2 of ratio 0.2 get 60% and 80%; ratio 0.8 gets 0%; a copy of seed 1 counts once
    rows = [record("m", 1, np.arange(10) < 6, {"ratio": 0.2})]
    rows += [record("m", 2, np.arange(10) < 8, {"ratio": 0.2})]
    rows += [record("m", s, np.zeros(10), {"ratio": 0.8}) for s in (1, 2)]
    again = record("m", 1, np.arange(10) < 6, {"ratio": 0.2}, run_key="copy", created="2026-01-02")
    failed = {**record("m", 3, np.ones(10), {"ratio": 0.2}), "status": "failed"}
    frame = pd.DataFrame([*rows, again, failed])
    means = ev.seed_means(frame, by=["label"])
    assert list(means.columns) == [
        "label",
        "options.ratio",
        "accuracy",
        "accuracy_std",
        "accuracy_count",
    ]
    by_ratio = means.set_index("options.ratio")
    assert by_ratio.loc[0.2, "accuracy"] == pytest.approx(70.0)
    assert by_ratio.loc[0.2, "accuracy_std"] == pytest.approx(math.sqrt(200))  # ddof 1
    assert by_ratio.loc[0.2, "accuracy_count"] == 2
    assert by_ratio.loc[0.8, "accuracy"] == 0.0
    assert ev.seed_means(frame.iloc[:0], by=["label"]).empty


def test_pivot_means_is_a_table_of_numbers_one_configuration_per_cell():
    rows = [record("a", 1, np.arange(10) < 6), record("a", 2, np.arange(10) < 8)]
    rows += [record("b", s, np.arange(10) < 3, {"ratio": 0.2}) for s in (1, 2)]
    rows += [record("b", s, np.arange(10) < 5, {"ratio": 0.8}) for s in (1, 2)]
    table = ev.pivot_means(pd.DataFrame(rows), "label", "dataset")
    # b's two ratios are two rows (the option joins the index), a's seeds one mean
    assert table.index.names == ["label", "options.ratio"]
    assert table.loc[("a", ""), "d"] == 70.0
    assert (table.loc[("b", 0.2), "d"], table.loc[("b", 0.8), "d"]) == (30.0, 50.0)
    # from a seed_means frame: the same cells
    means = ev.seed_means(pd.DataFrame(rows), by=["label", "dataset"])
    again = ev.pivot_means(means, "label", "dataset")
    assert sorted(again["d"]) == sorted(table["d"])
    assert ev.pivot_means(pd.DataFrame(), "label", "dataset").empty


def test_runs_differing_only_in_an_option_are_never_averaged():
    ones, zeros = np.ones(50), np.zeros(50)
    rows = [record("m", s, ones, {"ratio": 0.2}) for s in (1, 2)]
    rows += [record("m", s, zeros, {"ratio": 0.8}) for s in (1, 2)]
    frame = pd.DataFrame(rows)
    assert "options.ratio" in ev.group_columns(frame, ["label"])
    s = ev.summarize(frame, by=["label"])
    assert len(s) == 2 and sorted(s["mean"]) == [0.0, 100.0]
    assert sorted(s["options.ratio"]) == [0.2, 0.8]
    with pytest.raises(ValueError, match="options.ratio"):
        ev.paired_difference(frame, a="m", b="m", on=["dataset"])
    with pytest.raises(ValueError, match="several configurations"):
        ev.pivot(s.drop(columns="options.ratio"), "label", "n_seeds")
    # the progress flag is not a result: same configuration
    quiet = [record("m", 3, ones, {"ratio": 0.2, "progress": True})]
    s2 = ev.summarize(pd.DataFrame(rows[:2] + quiet), by=["label"])
    assert len(s2) == 1 and s2.iloc[0]["n_seeds"] == 3


def test_every_config_field_and_the_weights_separate_configurations():
    ones = np.ones(10)
    a, b, c = record("m", 1, ones), record("m", 1, ones, run_key="k2"), record("m", 1, ones)
    b["config"] = {**b["config"], "val": "full"}  # a field added later still separates
    c["run_key"], c["backbone_info"] = "k3", {"identity": "rn|abc"}
    s = ev.summarize(pd.DataFrame([a, b, c]), by=["label"])
    assert len(s) == 3 and {"val", "weights"} <= set(s.columns)
    # data_root is not a result field
    d = record("m", 2, ones)
    d["config"] = {**d["config"], "data_root": "/elsewhere"}
    assert len(ev.summarize(pd.DataFrame([a, d]), by=["label"])) == 1


def test_identical_configurations_stored_twice_count_once():
    rng = np.random.default_rng(6)
    bits = rng.random(80) < 0.5
    first = record("m", 1, bits, created="2026-01-01")
    again = {**record("m", 1, bits, created="2026-01-02"), "run_key": "other-key"}
    frame = pd.DataFrame([first, first, again, record("m", 2, bits)])
    s = ev.summarize(frame, by=["label"])
    assert len(s) == 1 and s.iloc[0]["n_seeds"] == 2 and s.iloc[0]["duplicates"] == 2
    keyed = ev.configurations(frame)
    assert len(keyed) == 2 and "other-key" in set(keyed["run_key"])  # the latest is kept


def test_failed_rows_and_old_records_without_bits():
    ok = record("m", 1, np.ones(10))
    old = {**record("m", 2, np.zeros(10)), "metrics": {"test_images": 10}}
    failed = {"status": "failed", "config": {"method": "m", "seed": 3}, "method": "m"}
    s = ev.summarize(pd.DataFrame([ok, old, failed]), by=["label"])
    assert len(s) == 1 and s.iloc[0]["n_seeds"] == 2
    assert s.iloc[0]["interval"].startswith("binomial")


def test_harmonic_mean_is_bootstrapped_through_both_halves():
    rng = np.random.default_rng(7)
    base, new = rng.random(300) < 0.8, rng.random(300) < 0.4
    b, n = base.mean() * 100, new.mean() * 100
    rec = {**record("m", 1, base), "protocol": "base_to_new"}
    rec["metrics"] = {"base": _encode(base), "new": _encode(new)}
    rec.update(
        accuracy=2 * b * n / (b + n), base_accuracy=b, new_accuracy=n, hm=2 * b * n / (b + n)
    )
    parts = ev.parts_of(rec, "accuracy")
    assert len(parts.bits) == 2
    s = ev.summarize(pd.DataFrame([rec]), by=["label"], value="hm")
    assert s.iloc[0]["test_images"] == 600
    assert s.iloc[0]["ci_low"] < rec["hm"] < s.iloc[0]["ci_high"]
    assert s.iloc[0]["ci_low"] > n  # HM lies between the halves, and so does its interval


def test_runner_stores_per_image_correctness(tmp_path):
    from fewclip.config import RunConfig
    from fewclip.prompting.toy import coloured_squares
    from fewclip.runner import run

    coloured_squares(tmp_path / "sq", num_classes=4, per_class=10, seed=0)
    cfg = RunConfig(method="tip_adapter", dataset="folder:sq", backbone="fewclip-test-rn",
                    pretrained=None, shots=2, augment_views=1, data_root=str(tmp_path),
                    cache_dir=str(tmp_path / "cache"), progress=False)  # fmt: skip
    rec = run(cfg)
    bits = decode_correct(rec["metrics"]["correct"])
    assert bits.size == rec["metrics"]["test_images"]
    assert bits.mean() * 100 == pytest.approx(rec["accuracy"])
    assert rec["metrics"]["data_fingerprint"] and rec["metrics"]["test_labels"]
    b2n = run(cfg.replace(method="zero_shot", protocol="base_to_new"))
    parts = ev.parts_of(b2n, "hm")
    assert [p.size for p in parts.bits] == [
        b2n["metrics"]["base"]["test_images"],
        b2n["metrics"]["new"]["test_images"],
    ]
    assert decode_correct(b2n["metrics"]["new"]["correct"]).mean() * 100 == pytest.approx(
        b2n["new_accuracy"]
    )
    # the per-image labels: one per test image, the same images the digest names
    for entry in (rec["metrics"], b2n["metrics"]["base"], b2n["metrics"]["new"]):
        labels = decode_labels(entry["labels"])
        assert labels.size == entry["test_images"]
        assert labels_digest(torch.as_tensor(labels)) == entry["test_labels"]
    assert ev.parts_of(b2n, "hm", by_class=True).class_labels(1) is not None


def test_flat_figures_say_so():
    from fewclip.plots import shows_nothing

    flat = pd.DataFrame(
        {"label": ["m", "m"], "shots": [1, 16], "ci_low": [40.0, 42.0], "ci_high": [50.0, 52.0]}
    )
    assert "no difference in shots" in shows_nothing(flat, "shots")
    rising = flat.assign(ci_low=[40.0, 60.0], ci_high=[50.0, 70.0])
    assert shows_nothing(rising, "shots") is None
    assert "no run finished" in shows_nothing(flat.iloc[:0], "shots")


def test_paper_rows_of_ours_carry_intervals_and_never_merge_options():
    from fewclip import paper

    rng = np.random.default_rng(8)
    rows = [record("m", s, rng.random(100) < 0.6) for s in (1, 2, 3)]
    frame = pd.DataFrame(rows).assign(backbone="rn", model_label="tiny", label="m")
    ours = paper.ours(frame)
    assert len(ours) == 1 and ours.iloc[0]["n"] == 3
    assert ours.iloc[0]["ci_low"] < ours.iloc[0]["value"] < ours.iloc[0]["ci_high"]
    other = pd.DataFrame([record("m", 1, np.ones(100), {"x": 2})]).assign(
        backbone="rn", model_label="tiny", label="m"
    )
    both = paper.ours(pd.concat([frame, other]))
    assert len(both) == 2  # two configurations, two rows: side_by_side then refuses the clash
    with pytest.raises(ValueError, match="several ours numbers"):
        paper.side_by_side(paper.load(paper="clip_adapter", shots=16).iloc[:0], both)
    table = paper.side_by_side(paper.load(paper="clip_adapter", shots=16), ours)
    cell = table[("ours: rn", "d")].dropna().iloc[0]
    assert "+-" in cell and "[" in cell and "n=3" in cell
    assert paper.missing("dual_adapter")


def test_paper_table_takes_hand_made_rows_without_intervals():
    from fewclip import paper

    rows = [record("m", s, np.ones(20)) for s in (1, 2)]
    frame = pd.DataFrame(rows).assign(backbone="rn", model_label="tiny", label="m")
    ours = paper.ours(frame)
    extra = ours.assign(method="hand", ci_low=float("nan"), ci_high=float("nan"), n=np.nan)
    table = paper.side_by_side(paper.load(paper="clip_adapter", shots=16), pd.concat([ours, extra]))
    assert table.loc[("hand", 16), ("ours: rn", "d")] == 100.0


# --------------------------------------------------------------------------- new classes by class


def test_labels_codec_round_trips_compactly():
    labels = torch.tensor([3, 3, 0, 7, 1, 1, 1])
    np.testing.assert_array_equal(decode_labels(encode_labels(labels)), labels.numpy())
    sorted_labels = torch.arange(500).repeat_interleave(50)  # ImageNet's test: 25,000 images
    text = encode_labels(sorted_labels)
    assert text.startswith("25000:") and len(text) < 8000
    np.testing.assert_array_equal(decode_labels(text), sorted_labels.numpy())


def test_class_bootstrap_by_hand():
    """Four classes of five images, class accuracies 0, 100, 0, 100 (the mean 50). Drawing
    the 4 classes with replacement, the accuracy is the mean of 4 draws of 0 or 100: its
    variance is 50^2 / 4 = 625. Drawing the 20 images instead: 50^2 / 20 = 125."""
    bits = np.repeat([False, True, False, True], 5)
    labels = np.repeat(np.arange(4), 5)
    by_class = ev.Parts([bits], [""], ev.identity, [labels])
    rng = np.random.default_rng(0)
    v_class = ev.boot_seed_mean([[by_class]], [1.0], 40_000, rng).var()
    v_image = ev.boot_seed_mean([[ev.Parts.plain(bits)]], [1.0], 40_000, rng).var()
    assert v_class == pytest.approx(625, rel=0.03)
    assert v_image == pytest.approx(125, rel=0.03)
    # classes of unequal size: a draw's accuracy is its images' accuracy, not the class mean
    bits = np.array([True, False, False, False, True])
    labels = np.array([5, 5, 5, 5, 9])  # class 5: 1 of 4 right, class 9: 1 of 1
    draws = ev.boot_seed_mean([[ev.Parts([bits], [""], ev.identity, [labels])]], [1.0], 4000, rng)
    # only three values are possible: both draws class 5 (25%), both class 9 (100%), mixed (40%)
    assert set(np.round(draws, 6)) == {25.0, 40.0, 100.0}


def _classes_world(rng, classes=20, per_class=30):
    """B right on half the images of every class; A's accuracy on a class is 50% plus a
    per-class gain drawn uniformly from [-30, 40] points: the true difference over the
    population of classes is 5 points, and the gain differs from class to class."""
    gain = rng.uniform(-0.3, 0.4, classes)
    labels = np.repeat(np.arange(classes), per_class)
    a = rng.random(labels.size) < 0.5 + gain[labels]
    b = rng.random(labels.size) < 0.5
    return a, b, labels


def test_class_bootstrap_covers_a_gain_that_varies_by_class():
    """New classes are a sample of classes: the image bootstrap, which treats the 600
    images as the sample, covers the true difference far less often than 95%; the class
    bootstrap about 95% (300 simulated experiments, one seed each)."""
    rng = np.random.default_rng(11)
    hits = {"image": 0, "class": 0}
    trials = 300
    for _ in range(trials):
        a, b, labels = _classes_world(rng)
        diff = (a.mean() - b.mean()) * 100
        for how, classes in (("image", None), ("class", [labels])):
            pa = ev.Parts([a], [""], ev.identity, classes)
            pb = ev.Parts([b], [""], ev.identity, classes)
            v = ev.boot_seed_mean([[pa], [pb]], [1.0, -1.0], 300, rng).var(ddof=1)
            low, high, _ = ev.combine_interval(diff, math.nan, 1, v)
            hits[how] += low <= 5.0 <= high
    assert hits["class"] / trials >= 0.88
    assert hits["image"] / trials <= 0.80


def _b2n(method, seed, base, new, new_labels, stored=True):
    """A base-to-new record; ``stored=False``: made before the per-image labels were kept."""
    rec = {**record(method, seed, base), "protocol": "base_to_new"}
    labels = torch.as_tensor(new_labels)
    rec["metrics"] = {"base": _encode(base), "new": _encode(new)}
    rec["metrics"]["new"]["test_labels"] = labels_digest(labels)
    if stored:
        rec["metrics"]["new"]["labels"] = encode_labels(labels)
    b, n = base.mean() * 100, new.mean() * 100
    hm = 2 * b * n / (b + n)
    rec.update(accuracy=hm, base_accuracy=b, new_accuracy=n, hm=hm)
    return rec


def test_paired_cells_resample_new_classes_by_class_where_labels_exist():
    rng = np.random.default_rng(3)
    base = rng.random(200) < 0.7
    rows, old = [], []
    for seed in (1, 2, 3):
        a, b, labels = _classes_world(rng, classes=10)
        rows += [_b2n("a", seed, base, a, labels), _b2n("b", seed, base, b, labels)]
        old += [_b2n("a", seed, base, a, labels, False), _b2n("b", seed, base, b, labels, False)]
    frame = pd.DataFrame(rows)
    for value in ("new_accuracy", "hm"):
        by_image = ev.paired_cells(frame, "a", "b", on=["dataset"], value=value)[0]
        by_class = ev.paired_cells(frame, "a", "b", on=["dataset"], value=value, by_class=True)[0]
        assert "new classes resampled by class" in by_class.interval
        assert "by class" not in by_image.interval
        assert by_class.v_img > 2 * by_image.v_img  # the gain varies by class
        np.testing.assert_array_equal(by_class.diff, by_image.diff)
    # base accuracy has no new classes: by_class changes nothing
    kw = dict(on=["dataset"], value="base_accuracy", n_boot=200)
    assert ev.paired_cells(frame, "a", "b", **kw)[0].v_img == pytest.approx(
        ev.paired_cells(frame, "a", "b", by_class=True, **kw)[0].v_img, abs=0
    )
    # a record without labels: every record falls back to images, and the text says so
    mixed = pd.DataFrame(rows[:-1] + old[-1:])
    got = ev.paired_cells(mixed, "a", "b", on=["dataset"], value="hm", by_class=True)[0]
    plain = ev.paired_cells(mixed, "a", "b", on=["dataset"], value="hm")[0]
    assert "a record lacks per-image labels" in got.interval
    assert got.v_img == plain.v_img
