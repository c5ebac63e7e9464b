"""The explorer's views and widgets: what the widget callbacks put into the output areas
(a PNG per chart, the per-class bars equal to the record's accuracies), legends beside the
plot whatever their length, and the selection following the controls."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from fewclip.explorer import Explorer, Views
from fewclip.prompting.toy import coloured_squares

CLASSES = 6


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """A store frame of 26 methods (a legend of 26 entries + zero-shot) on two datasets,
    with known per-class accuracies, and the image folders they name."""
    data = tmp_path_factory.mktemp("explorer") / "data"
    coloured_squares(data / "squares", num_classes=CLASSES, per_class=4, seed=0)
    coloured_squares(data / "squares_b", num_classes=4, per_class=4, seed=1, offset=4)
    rows = []
    for ds, classes in (("folder:squares", CLASSES), ("folder:squares_b", 4)):
        for m in range(26):
            for shots in (1, 2, 4):
                for seed in (1, 2):
                    per_class = [float(10 * c + m + shots + seed) for c in range(classes)]
                    rows.append(
                        {
                            "backbone": "fewclip-test-rn",
                            "pretrained": None,
                            "dataset": ds,
                            "protocol": "few_shot",
                            "method": f"method{m:02d}",
                            "variant": "",
                            "label": f"method{m:02d}",
                            "shots": shots,
                            "seed": seed,
                            "accuracy": float(np.mean(per_class)),
                            "metrics": {"per_class_accuracy": per_class},
                            "status": "done",
                            "config": {},
                        }
                    )
        rows.append({**rows[-1], "method": "zero_shot", "label": "zero_shot", "shots": 0})
    return Views(pd.DataFrame(rows), data_root=str(data))


def png_of(output: dict) -> Image.Image:
    assert output["output_type"] == "display_data"
    return Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))


def drawn_fraction(image: Image.Image) -> float:
    """Share of pixels that are not (near) white: a blank chart has almost none."""
    pixels = np.asarray(image.convert("L"))
    return float((pixels < 200).mean())


def test_widget_callbacks_draw_the_charts_into_the_output_areas(views, monkeypatch):
    drawn = {}
    for name in ("curves", "per_class"):
        original = getattr(views, name)

        def spy(*args, _original=original, _name=name):
            drawn[_name] = _original(*args)
            return drawn[_name]

        monkeypatch.setattr(views, name, spy)
    labels = views.labels_of("fewclip-test-rn", "folder:squares", "few_shot")
    explorer = Explorer(
        views, "fewclip-test-rn", "folder:squares", "few_shot", labels, "method03", 4
    )
    assert explorer.curves_out.outputs == () and explorer.per_class_out.outputs == ()
    explorer.w_draw.click()
    curves = explorer.curves_out.outputs
    assert [set(o["data"]) >= {"image/png"} for o in curves[:1]] == [True]
    assert "text/markdown" in curves[1]["data"] and "text/html" in curves[2]["data"]
    assert drawn_fraction(png_of(curves[0])) > 0.05
    (chart,) = explorer.per_class_out.outputs
    image = png_of(chart)
    assert drawn_fraction(image) > 0.05, "the per-class chart is blank"
    # the chart shows the record's per-class accuracies (seed 1 of method03 at 4 shots)
    (fig,) = drawn["per_class"]
    bars = sorted(p.get_width() for p in fig.axes[0].patches if p.get_width() > 0)
    assert bars == [float(10 * c + 3 + 4 + 1) for c in range(CLASSES)]
    # the PNG is that figure, not an empty canvas
    assert image.size[1] >= 0.9 * fig.get_figheight() * 90


def test_changing_the_selection_redraws_the_new_one(views):
    labels = views.labels_of("fewclip-test-rn", "folder:squares", "few_shot")
    explorer = Explorer(
        views, "fewclip-test-rn", "folder:squares", "few_shot", labels, "method03", 2
    )
    explorer.w_dataset.value = "folder:squares_b"  # options follow, then one redraw
    assert explorer.w_run.value == "method03" and explorer.w_shots.value == 2
    assert set(explorer.w_labels.value) == set(labels)
    assert "folder:squares_b" in explorer.curves_out.outputs[1]["data"]["text/markdown"]
    (chart,) = explorer.per_class_out.outputs
    assert drawn_fraction(png_of(chart)) > 0.05
    explorer.w_shots.value = 1
    explorer.w_run.value = "method07"
    assert drawn_fraction(png_of(explorer.per_class_out.outputs[0])) > 0.05
    explorer.w_labels.value = ("method00",)
    assert "method00" in explorer.curves_out.outputs[2]["data"]["text/html"]
    assert "method07" not in explorer.curves_out.outputs[2]["data"]["text/html"]
    # zero-shot has runs at 0 shots only: the shots menu follows the run
    explorer.w_run.value = "zero_shot"
    assert list(explorer.w_shots.options) == [0] and explorer.w_shots.value == 0
    assert drawn_fraction(png_of(explorer.per_class_out.outputs[0])) > 0.05
    explorer.w_run.value = "method07"
    assert list(explorer.w_shots.options) == [1, 2, 4] and explorer.w_shots.value == 4
    # a run that is not in the store: a note, not an error or a stale chart
    (note,) = views.per_class("fewclip-test-rn", "folder:squares_b", "few_shot", "method07", 3)
    assert "No per-class accuracy" in note


def test_one_name_per_run_and_only_shots_that_exist(views):
    """The same run stored with and without a variant label is one menu entry; a trained
    method is offered only the shots it has runs at, never 0."""
    store = views.store
    one = store[(store["label"] == "method05") & (store["dataset"] == "folder:squares")]
    again = one.assign(variant="method05 (visual)", label="method05 (visual)")
    merged = Views(pd.concat([store, again], ignore_index=True))
    names = merged.labels_of("fewclip-test-rn", "folder:squares", "few_shot")
    assert "method05 (visual)" in names and "method05" not in names
    assert len(names) == len(views.labels_of("fewclip-test-rn", "folder:squares", "few_shot"))
    assert views.shots_of("fewclip-test-rn", "folder:squares", "few_shot", "method05") == [1, 2, 4]
    # asked for 0 shots of a trained method: the menu offers what exists instead
    explorer = Explorer(
        views, "fewclip-test-rn", "folder:squares", "few_shot", ["method05"], "method05", 0
    )
    assert 0 not in explorer.w_shots.options and explorer.w_shots.value == 4


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_many_curves_are_split_into_panels_with_their_legends_beside(views):
    labels = views.labels_of("fewclip-test-rn", "folder:squares", "few_shot")
    fig, _, _ = views.curves("fewclip-test-rn", "folder:squares", "few_shot", labels)
    assert isinstance(fig, Figure)
    renderer = FigureCanvasAgg(fig).get_renderer()
    panels = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(panels) == len(fig.axes) == 5  # 26 curves, at most six a panel
    shown = set()
    for ax in panels:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(texts) <= 6 + 1 and texts[-1].endswith("(0 shots)")  # + the zero-shot line
        shown.update(texts[:-1])
        box = ax.get_legend().get_window_extent(renderer)
        assert not any(overlaps(box, other.get_window_extent(renderer)) for other in fig.axes)
    assert len(shown) == 26
    # the per-class chart of a few-shot run has one group: no legend over the bars
    (bars,) = views.per_class("fewclip-test-rn", "folder:squares", "few_shot", "method01", 1)
    assert bars.axes[0].get_legend() is None


def test_the_kernel_is_registered_in_the_checkouts_venv_not_per_user():
    """Two clones' `make lab` never repoint each other's notebooks: the kernel goes into the
    checkout's own .venv (--sys-prefix) and JupyterLab finds that one first."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    installs = re.findall(r"ipykernel install (.*)", makefile)
    assert installs and all("--sys-prefix" in i and "--user" not in i for i in installs)
    (lab,) = re.findall(r"\n\t(.*jupyter lab .*)", makefile)
    assert lab.startswith("JUPYTER_PATH=$(abspath $(VENV))/share/jupyter ")
