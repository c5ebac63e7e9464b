"""The one report style: tables (no wrapped or truncated numbers, one missing symbol,
readable headers, display names, no index of zeros), the conclusions and the "how to read
this" box, and figures (intervals clipped to [0, 100], legends outside the data, at most six
series a panel, no overlapping text) rendered on representative data."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fewclip import notebook as nb  # noqa: E402
from fewclip import plots  # noqa: E402


def summary(labels, xs, rng, low_end=False):
    rows = []
    for label in labels:
        for x in xs:
            mean = float(rng.uniform(2 if low_end else 20, 90))
            rows.append(
                {
                    "label": label,
                    "shots": x,
                    "mean": mean,
                    "ci_low": mean - 12,
                    "ci_high": mean + 12,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables


def test_table_text_one_style():
    frame = pd.DataFrame(
        {
            "label": ["tip_adapter_f", "zero_shot", "APEX (both)"],
            "n_seeds": [3.0, 1.0, np.nan],
            "mean_a": [34.302326, np.nan, 50.0],
            "note": ["-", None, "nan"],
        }
    )
    text = nb.table_text(frame)
    assert list(text.columns) == ["method", "seeds", "mean A", "note"]
    assert list(text["method"]) == ["Tip-Adapter-F", "Zero-shot CLIP", "APEX (both)"]
    assert list(text["seeds"]) == ["3", "1", nb.MISSING]  # whole numbers without decimals
    assert list(text["mean A"]) == ["34.3", nb.MISSING, "50.0"]
    assert list(text["note"]) == [nb.MISSING] * 3  # one symbol for every missing value


def test_table_keeps_a_meaningful_index_and_drops_zeros():
    plain = pd.DataFrame({"value": [1.5, 2.5]}, index=[0, 0])  # a concat's repeated zeros
    assert list(nb.table_text(plain).columns) == ["value"]
    wide = pd.DataFrame({"value": [1.25]}, index=pd.Index(["coop"], name="label"))
    assert list(nb.table_text(wide).columns) == ["method", "value"]
    assert nb.table_text(wide)["method"][0] == "CoOp"


def test_table_html_never_wraps_or_truncates_numbers():
    long = "x" * 400
    table = nb.Table(pd.DataFrame({"comparison": [long], "effect": [1.23456]}), "Caption")
    html = table._repr_html_()
    assert long in html and "..." not in html  # no display.max_colwidth cut
    assert "white-space:nowrap" in html and "<b>Caption</b>" in html
    assert "<th>0</th>" not in html and "1.2" in html
    assert "Caption" in repr(table) and long in repr(table)


def test_words_are_left_aligned_and_wrapped_and_numbers_are_not():
    frame = pd.DataFrame(
        {
            "label": ["CoOp", "ProDA"],
            "gap": [-1.25, 3.0],
            "cell": ["38.4 +- 1.2 [36.0, 40.8] n=3", "-2.0 +- 0.5 [-3.1, -0.9] n=3"],
            "cause": ["its 32 prompts start random <b>", nb.MISSING],
        }
    )
    assert nb.text_columns(nb.table_text(frame)) == [0, 3]
    html = nb.Table(frame)._repr_html_()
    styled = set(re.findall(r"td\.(col\d+)[ ,{]", html))
    assert styled == {"col0", "col3"} and "text-align: left" in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # cells are escaped


def test_cells_coloured_by_value_keep_the_style():
    frame = pd.DataFrame({"id": ["a", "b"], "verdict": ["supported", "contradicted"]})
    html = nb.Table(frame, "Verdicts", colours={"verdict": {"supported": "color: green"}})
    html = html._repr_html_()
    assert "color: green" in html and "fewclip-table" in html and "Verdicts" in html
    assert "white-space:nowrap" in html


def test_a_paired_difference_is_not_headed_accuracy():
    frame = pd.DataFrame({"a": ["apex"], "b": ["coop"], "accuracy": ["1.0 [0.5, 1.5] n=3"]})
    assert list(nb.table_text(frame).columns) == ["A", "B", "A - B (points)"]


def test_sentences_come_from_the_numbers():
    s = pd.DataFrame(
        {
            "label": ["coop", "apex"],
            "mean": [30.0, 45.0],
            "ci_low": [28.0, 40.0],
            "ci_high": [32.0, 50.0],
        }
    )
    sentence = nb.best_sentence(s, "HM", "tuxpaint_photos")
    assert sentence.startswith("Highest HM on tuxpaint_photos: APEX 45.0 [40.0, 50.0]")
    assert "CoOp 30.0 [28.0, 32.0]" in sentence and "do not overlap" in sentence
    row = {"a": "apex", "b": "coop", "diff": -2.0, "ci_low": -3.0, "ci_high": 1.0}
    assert "no difference resolved" in nb.difference_sentence(row)
    row.update(diff=2.0, ci_low=0.5, ci_high=3.5)
    assert "APEX is ahead" in nb.difference_sentence(row)
    text, said = nb.conclusions_text(["First.", "", "Second."])
    assert said == ["First.", "Second."] and text.endswith("- First.\n- Second.")
    assert nb.conclusions_text([])[1] == [
        "No conclusion: no comparison finished (see the failed runs below)."
    ]
    assert "Welch-Satterthwaite" in nb.how_to_read_text("A note.")


# --------------------------------------------------------------------------- figures


def test_facets_keep_the_reference_and_at_most_six_series():
    names = [f"m{i}" for i in range(14)]
    groups = plots.facets(names)
    assert all(len(g) <= plots.MAX_SERIES and g[0] == "m0" for g in groups)
    assert set().union(*groups) == set(names)
    assert plots.facets(names[:4]) == [names[:4]]


def test_interval_curve_clips_splits_and_names():
    rng = np.random.default_rng(0)
    data = summary(
        [f"method_{i}" for i in range(9)] + ["tip_adapter_f"], [1, 2, 4, 8, 16], rng, True
    )
    ax = plots.interval_curve(data, "shots", title="curves", model="test model", log2_x=True)
    fig = ax.figure
    panels = [a for a in fig.axes if a.get_legend() is not None]
    assert len(panels) == 2  # ten series: two panels
    for panel in panels:
        names = [t.get_text() for t in panel.get_legend().get_texts()]
        assert len(names) <= plots.MAX_SERIES
        for band in panel.collections:
            for path in band.get_paths():
                y = path.vertices[:, 1]
                assert y.min() >= 0 and y.max() <= 100  # clipped to [0, 100]
    legend_names = {t.get_text() for p in panels for t in p.get_legend().get_texts()}
    assert "Tip-Adapter-F" in legend_names and "tip_adapter_f" not in legend_names
    assert plots.text_overlaps(fig) == []
    plt.close(fig)


def test_legend_sits_outside_the_data():
    rng = np.random.default_rng(1)
    ax = plots.interval_curve(
        summary(["coop", "apex", "maple"], [1, 2, 4], rng), "shots", title="t", model="m"
    )
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1
    plt.close(fig)


def test_interval_bars_clip_and_use_display_names():
    frame = pd.DataFrame(
        {
            "label": ["zero_shot", "clip_adapter", "cocoop", "prograd", "maple", "apex"],
            "mean": [5.0, 40.0, 60.0, 95.0, 50.0, 70.0],
            "ci_low": [-9.0, 30.0, 50.0, 85.0, 40.0, 60.0],
            "ci_high": [19.0, 50.0, 70.0, 105.0, 60.0, 80.0],
        }
    )
    ax = plots.interval_bars(frame, title="Cross-dataset transfer", model="test model")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[:2] == ["Zero-shot CLIP", "CLIP-Adapter"]
    lows = [seg[:, 1].min() for c in ax.collections for seg in c.get_segments()]
    highs = [seg[:, 1].max() for c in ax.collections for seg in c.get_segments()]
    assert min(lows) >= 0 and max(highs) <= 100
    assert plots.text_overlaps(ax.figure) == []
    plt.close(ax.figure)


def test_text_overlaps_finds_colliding_text():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "left words")
    ax.text(0.8, 0.2, "far away")
    assert plots.text_overlaps(fig) == []
    fig.suptitle("a title counted once")
    assert plots.text_overlaps(fig) == []
    ax.text(0.52, 0.5, "right words")
    assert ("left words", "right words") in plots.text_overlaps(fig)
    plt.close(fig)


def test_shared_scale_spans_every_panel():
    assert plots.shared_scale([np.array([[0.1, 0.2]]), np.array([[0.05, 0.9]])]) == (0.05, 0.9)
    assert plots.shared_scale([np.array([np.nan])]) == (0.0, 1.0)


@pytest.mark.parametrize("name", ["curve", "bars"])
def test_run_frame_figures_show_the_tables_interval(name, monkeypatch):
    calls = {}

    def fake(frame, by=("label",), value="accuracy"):
        calls["by"], calls["value"] = tuple(by), value
        return pd.DataFrame(
            {"label": ["coop"], "shots": [1], "mean": [50.0], "ci_low": [40.0], "ci_high": [60.0]}
        )

    monkeypatch.setattr("fewclip.evidence.summarize", fake)
    runs = pd.DataFrame({"label": ["coop"], "shots": [1], "accuracy": [50.0], "status": ["done"]})
    if name == "curve":
        ax = plots.curve(runs, "shots", title="t", model="m")
    else:
        ax = plots.bars(runs, "label", title="t", model="m")
    assert calls["value"] == "accuracy"  # the same summarize as the tables
    plt.close(ax.figure)


def test_save_lists_figures_with_overlapping_text(tmp_path):
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "left words")
    ax.text(0.52, 0.5, "right words")
    plots.save(fig, tmp_path, "bad")
    record = tmp_path / plots.OVERLAPS_FILE
    assert "bad" in record.read_text() and "right words" in record.read_text()
    ax.texts[1].set_visible(False)
    plots.save(fig, tmp_path, "bad")  # saved again without the collision: no record left
    assert not record.is_file()
    plt.close(fig)
