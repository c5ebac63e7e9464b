"""The explorer of ``notebooks/explore.ipynb``: views of the results store and their widgets.

    views = Views(store, data_root="data", cache_dir="cache")
    show(*views.curves(backbone, dataset, "few_shot", labels))   # static view (papermill, HTML)
    explorer = Explorer(views, backbone, dataset, protocol, labels, label, shots)
    display(explorer.widget)                                      # interactive (JupyterLab)

Every view returns what it draws: matplotlib :class:`~matplotlib.figure.Figure` objects that
no pyplot state knows about (so nothing is flushed twice or lost), Markdown and tables. The
widgets put the figures into their :class:`ipywidgets.Output` areas as PNG images by setting
the areas' outputs (kernel-side state), not by capturing display calls inside ``with out:``,
which in JupyterLab combined with ``clear_output(wait=True)`` left the per-class chart blank,
and under papermill can hang the execution (nbclient issue #312). Legends with many entries
sit beside the axes, never over the data; more than :data:`fewclip.plots.MAX_SERIES` curves
are split over panels. Nothing here computes a method: a refit goes
through :func:`fewclip.runner.fit_run`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import evidence as ev
from . import notebook as nb
from . import plots

METRIC = {"base_to_new": "HM of base and new accuracy"}


# --------------------------------------------------------------------------- helpers


def figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure outside pyplot's registry (shown only when asked) and its axes."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def legend_beside(ax: Axes, fontsize: int = 7, per_column: int = 18) -> None:
    """Move the axes' legend to the right of the plot (columns of ``per_column`` entries),
    so that no number of entries covers the data; no legend for fewer than two entries."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if len(labels) < 2:
        return
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        ncol=math.ceil(len(labels) / per_column),
        frameon=False,
    )


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, its outside legend included."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def displayable(obj: Any) -> Any:
    """What IPython displays for a view's output: a Figure becomes a PNG image."""
    from IPython.display import Image, Markdown

    if isinstance(obj, Figure):
        return Image(data=png(obj), format="png")
    if isinstance(obj, str):
        return Markdown(obj)
    return obj


def show(*objects: Any) -> None:
    """Display a view's outputs in the notebook (the static view)."""
    from IPython.display import display

    for obj in objects:
        display(displayable(obj))


def render(out: Any, *objects: Any) -> None:
    """Replace an ``ipywidgets.Output``'s content by a view's outputs (set as its state)."""
    out.outputs = ()
    for obj in objects:
        out.append_display_data(displayable(obj))


# --------------------------------------------------------------------------- views


def one_name_per_run(store: pd.DataFrame) -> pd.DataFrame:
    """``store`` with one ``label`` per run: records of the same run (every
    result-determining field and the seed equal) stored under different labels, e.g. once
    with a variant label and once without, all take the same one (the variant's, else the
    first), so the menus never offer one run under two names."""
    if not len(store) or "label" not in store:
        return store
    keys = []
    for record in store.to_dict("records"):
        fields = {k: v for k, v in ev.config_fields(record).items() if k != "variant"}
        keys.append(ev.config_id(fields) + f"/{record.get('seed')}")
    out = store.copy()
    out["_run"] = keys
    names = {}
    for run, group in out.groupby("_run", sort=False):
        labels = list(dict.fromkeys(group["label"]))
        if len(labels) > 1:
            methods = set(group["method"]) if "method" in group else set()
            named = [label for label in labels if label not in methods]
            names[run] = (named or labels)[0]
    if names:
        out["label"] = [
            names.get(r, label) for r, label in zip(out["_run"], out["label"], strict=True)
        ]
    return out.drop(columns="_run")


class Views:
    """The explorer's three views over a results-store frame (``nb.store_frame``)."""

    def __init__(
        self,
        store: pd.DataFrame,
        data_root: str = "data",
        cache_dir: str = "cache",
        device: str = "auto",
    ) -> None:
        self.store = one_name_per_run(store[store["accuracy"].notna()] if len(store) else store)
        self.data_root, self.cache_dir, self.device = data_root, cache_dir, device

    # ---- what the store holds
    def backbones(self) -> list[str]:
        return sorted(self.store["backbone"].unique())

    def selection(self, bb: str, ds: str, protocol: str | None) -> pd.DataFrame:
        rows = self.store[(self.store["backbone"] == bb) & (self.store["dataset"] == ds)]
        return rows[rows["protocol"] == protocol] if protocol else rows

    def datasets_of(self, bb: str) -> list[str]:
        return list(self.store[self.store["backbone"] == bb]["dataset"].value_counts().index)

    def protocols_of(self, bb: str, ds: str) -> list[str]:
        return list(self.selection(bb, ds, None)["protocol"].value_counts().index)

    def labels_of(self, bb: str, ds: str, protocol: str) -> list[str]:
        return sorted(self.selection(bb, ds, protocol)["label"].unique())

    def shots_of(self, bb: str, ds: str, protocol: str, label: str | None = None) -> list[int]:
        """The shots the store has runs at (of run ``label`` only, where given: a trained
        method is never offered 0 shots it has no run for)."""
        rows = self.selection(bb, ds, protocol)
        if label is not None:
            rows = rows[rows["label"] == label]
        return sorted(int(s) for s in rows["shots"].unique())

    def tag(self, bb: str) -> str:
        """The model label of a backbone's runs (random init, toy model, ...)."""
        return nb.model_tag(self.store[self.store["backbone"] == bb].iloc[0])

    def run_row(self, bb: str, ds: str, protocol: str, label: str, k: int) -> pd.Series | None:
        rows = self.selection(bb, ds, protocol)
        rows = rows[(rows["label"] == label) & (rows["shots"] == k)]
        return None if not len(rows) else rows.sort_values("seed").iloc[0]

    # ---- the views
    def curves(self, bb: str, ds: str, protocol: str, labels: Sequence[str]) -> list:
        """Few-shot curves (mean over seeds, 95% interval band), zero-shot lines, caption, table."""
        rows = self.selection(bb, ds, protocol)
        rows = rows[rows["label"].isin(list(labels))]
        zero = rows[rows["shots"] == 0]
        trained = rows[rows["shots"] > 0]
        metric = METRIC.get(protocol, "accuracy")
        # at most plots.MAX_SERIES curves a panel (the zero-shot lines in every panel)
        names = sorted(trained["label"].unique())
        per = math.ceil(len(names) / max(1, math.ceil(len(names) / plots.MAX_SERIES)))
        panels = [names[i : i + per] for i in range(0, len(names), per)] or [[]]
        fig = Figure(figsize=(7, 3.2 * len(panels) + 0.8))
        axes = fig.subplots(len(panels), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
        for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
            part = f" ({i + 1} of {len(panels)})" if len(panels) > 1 else ""
            plots.curve(
                trained[trained["label"].isin(panel)],
                "shots",
                title=f"{protocol} on {ds}: {metric}{part}",
                model=self.tag(bb),
                ax=ax,
                log2_x=True,
                ylabel=f"{metric} (%)",
            )
            for _, r in zero.iterrows():
                ax.axhline(
                    r["accuracy"], linestyle="--", color="grey", label=f"{r['label']} (0 shots)"
                )
            legend_beside(ax)
        fig.tight_layout()
        caption = (
            f"**{metric} (%) by shots, {protocol} on {ds}, mean over seeds. "
            f"Model: {self.tag(bb)}.**"
        )
        return [fig, caption, ev.pivot_means(rows, "label", "shots")]

    def per_class_frame(self, row: pd.Series, names: Sequence[str]) -> pd.DataFrame:
        """Per-class test accuracy of one record: every class (few-shot, ...) or the base and
        the new classes (base-to-new)."""
        m = row["metrics"] or {}
        if "per_class_accuracy" in m:
            acc = m["per_class_accuracy"]
            return pd.DataFrame({"class": names[: len(acc)], "accuracy": acc, "classes": "all"})
        parts = []
        for side in ("base", "new"):
            if side in m and f"{side}_classes" in m:
                labels = m[f"{side}_classes"]
                acc = m[side]["per_class_accuracy"]
                parts.append(
                    pd.DataFrame(
                        {"class": [names[i] for i in labels], "accuracy": acc, "classes": side}
                    )
                )
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def per_class(self, bb: str, ds: str, protocol: str, label: str, k: int) -> list:
        """A bar per class (its test accuracy) of the first seed's run, or a note."""
        from .data import load_dataset

        row = self.run_row(bb, ds, protocol, label, k)
        frame = (
            pd.DataFrame()
            if row is None
            else self.per_class_frame(row, load_dataset(ds, nb.resolve(self.data_root)).classnames)
        )
        if not len(frame):
            return [f"*No per-class accuracy of {label} with {k} shots on {ds}.*"]
        frame = frame.sort_values(["classes", "accuracy"])
        fig, ax = figure(7, max(3, 0.25 * len(frame)))
        sns.barplot(data=frame, y="class", x="accuracy", hue="classes", dodge=False, ax=ax)
        legend_beside(ax)
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("")
        title = f"Per-class accuracy: {label}, {k} shots, seed {row['seed']}, {ds}"
        plots.titled(ax, title, self.tag(bb))
        return [fig]

    def predictions(self, bb: str, ds: str, protocol: str, label: str, k: int, count: int) -> list:
        """Refit the run and show ``count`` test images with predicted and true class."""
        from PIL import Image

        from .config import RunConfig
        from .data import subsample_classes
        from .runner import Evaluator, fit_run

        row = self.run_row(bb, ds, protocol, label, k)
        if row is None:
            return [f"*No run of {label} with {k} shots on {ds}.*"]
        config = RunConfig.from_dict(
            {
                **row["config"],
                "data_root": nb.resolve(self.data_root),
                "cache_dir": nb.resolve(self.cache_dir),
                "device": self.device,
                "progress": False,
            }
        )
        try:
            fitted = fit_run(config)
            data = fitted.dataset
            rng = np.random.default_rng(0)
            size = min(count, len(data.test))
            pick = sorted(rng.choice(len(data.test), size=size, replace=False))
            items = [data.test[i] for i in pick]
            b2n = config.protocol == "base_to_new"
            train_names = subsample_classes(data, "base").classnames if b2n else None
            evaluator = Evaluator(fitted.method, fitted.backbone, config, fitted.cache)
            logits, labels = evaluator.logits(data, items, train_names)
        except Exception as error:  # shown, not raised: the explorer goes on
            return [f"**Could not refit this run:** `{type(error).__name__}: {error}`"]
        predicted = logits.argmax(-1).cpu().tolist()
        columns = 6
        lines = (len(items) + columns - 1) // columns
        fig = Figure(figsize=(2.1 * columns, 2.4 * lines))
        axes = fig.subplots(lines, columns, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        truth = labels.cpu().tolist()
        for ax, item, p, y in zip(axes.flat, items, predicted, truth, strict=False):
            ax.imshow(Image.open(item.impath).convert("RGB"))
            colour = "tab:green" if p == y else "tab:red"
            ax.set_title(
                f"pred: {data.classnames[p]}\ntrue: {data.classnames[y]}", fontsize=7, color=colour
            )
        over = "all classes, base and new" if b2n else "all classes"
        fig.suptitle(
            f"{label}, {k} shots on {ds}, predictions over {over} (refitted; the run's "
            f"{METRIC.get(protocol, 'test accuracy')}: {fitted.record['accuracy']:.1f}%)"
            f"\n[{self.tag(bb)}]",
            fontsize=9,
        )
        fig.tight_layout()
        return [fig]


# --------------------------------------------------------------------------- widgets


class Explorer:
    """The controls and the three output areas; every change redraws the curves and the
    per-class chart, "show predictions" refits the selected run."""

    def __init__(
        self,
        views: Views,
        backbone: str,
        dataset: str,
        protocol: str,
        labels: Sequence[str],
        label: str,
        shots: int,
        examples: int = 12,
    ) -> None:
        import ipywidgets as widgets

        self.views, self.examples = views, examples
        names = views.labels_of(backbone, dataset, protocol)
        self.w_backbone = widgets.Dropdown(
            options=views.backbones(), value=backbone, description="backbone"
        )
        self.w_dataset = widgets.Dropdown(
            options=views.datasets_of(backbone), value=dataset, description="dataset"
        )
        self.w_protocol = widgets.Dropdown(
            options=views.protocols_of(backbone, dataset), value=protocol, description="protocol"
        )
        self.w_labels = widgets.SelectMultiple(
            options=names, value=tuple(labels), description="methods", rows=6
        )
        offered = views.shots_of(backbone, dataset, protocol, label)
        self.w_shots = widgets.Dropdown(
            options=offered,
            value=shots if shots in offered else (max(offered) if offered else None),
            description="shots",
        )
        self.w_run = widgets.Dropdown(options=names, value=label, description="run")
        self.w_draw = widgets.Button(description="draw")
        self.w_predict = widgets.Button(description="show predictions")
        self.curves_out, self.per_class_out = widgets.Output(), widgets.Output()
        self.predictions_out = widgets.Output()
        self._refreshing = False
        for w in (self.w_backbone, self.w_dataset, self.w_protocol):
            w.observe(self.refresh_options, "value")
        for w in (self.w_labels, self.w_shots):
            w.observe(self.redraw, "value")
        self.w_run.observe(self.on_run, "value")
        self.w_draw.on_click(self.redraw)
        self.w_predict.on_click(self.on_predict)
        wrap = widgets.Layout(flex_flow="row wrap")  # controls wrap: no sideways scrolling
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.w_backbone, self.w_dataset, self.w_protocol], layout=wrap),
                widgets.HBox(
                    [
                        self.w_labels,
                        widgets.VBox([self.w_run, self.w_shots, self.w_draw, self.w_predict]),
                    ],
                    layout=wrap,
                ),
                self.curves_out,
                self.per_class_out,
                self.predictions_out,
            ]
        )

    def refresh_options(self, *_: Any) -> None:
        """A new backbone, dataset or protocol: the choices below it follow, then one redraw
        (keeping the selected run and shots where the new selection has them)."""
        v = self.views
        self._refreshing = True
        try:
            run, shots = self.w_run.value, self.w_shots.value
            self.w_dataset.options = v.datasets_of(self.w_backbone.value)
            self.w_protocol.options = v.protocols_of(self.w_backbone.value, self.w_dataset.value)
            selected = (self.w_backbone.value, self.w_dataset.value, self.w_protocol.value)
            choices = v.labels_of(*selected)
            self.w_labels.options, self.w_run.options = choices, choices
            self.w_labels.value = tuple(choices)
            if run in choices:
                self.w_run.value = run
            self._offer_shots(shots)
        finally:
            self._refreshing = False
        self.redraw()

    def _offer_shots(self, shots: int | None) -> None:
        """The shots menu: those the selected run has (keeping ``shots`` where it can)."""
        available = self.views.shots_of(*self.selected(), self.w_run.value)
        self.w_shots.options = available
        if shots in available:
            self.w_shots.value = shots
        elif available:
            self.w_shots.value = max(available)

    def on_run(self, *_: Any) -> None:
        """Another run: its shots offered, then one redraw."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            self._offer_shots(self.w_shots.value)
        finally:
            self._refreshing = False
        self.redraw()

    def selected(self) -> tuple[str, str, str]:
        return self.w_backbone.value, self.w_dataset.value, self.w_protocol.value

    def redraw(self, *_: Any) -> None:
        """Draw the curves and the per-class chart of the current selection."""
        bb, ds, protocol = self.selected()
        if self._refreshing or not (bb and ds and protocol):
            return
        render(self.curves_out, *self.views.curves(bb, ds, protocol, list(self.w_labels.value)))
        view = self.views.per_class(bb, ds, protocol, self.w_run.value, self.w_shots.value)
        render(self.per_class_out, *view)

    def on_predict(self, *_: Any) -> None:
        bb, ds, protocol = self.selected()
        view = self.views.predictions(
            bb, ds, protocol, self.w_run.value, self.w_shots.value, self.examples
        )
        render(self.predictions_out, *view)
