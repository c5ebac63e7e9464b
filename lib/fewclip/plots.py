"""Figures for the paper notebooks (seaborn over sweep frames); no computation of methods.

Every figure takes a ``model`` string (:func:`fewclip.notebook.model_tag`) and puts it in
the title, so a figure cut out of a report still says which model produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .notebook import display_name, done

#: At most this many series in one panel; more are split over panels (:func:`facets`).
MAX_SERIES = 6

sns.set_theme(context="notebook", style="whitegrid")


def titled(ax: plt.Axes, title: str, model: str) -> None:
    """Title plus the model line (small, second line)."""
    ax.set_title(f"{title}\n[{model}]", fontsize=10)


def curve(
    frame: pd.DataFrame,
    x: str,
    y: str = "accuracy",
    hue: str = "label",
    *,
    title: str,
    model: str,
    ax: plt.Axes | None = None,
    log2_x: bool = False,
    ylabel: str | None = None,
    style: str | None = None,
) -> plt.Axes:
    """Mean over seeds with its 95% interval (:func:`fewclip.evidence.summarize`, the
    tables' interval) as a band, one line per ``hue`` (``style`` is accepted and unused)."""
    from .evidence import summarize

    rows = done(frame)
    ok = len(rows) and y in rows and rows[y].notna().any()
    summary = summarize(rows, by=(hue, x), value=y) if ok else pd.DataFrame()
    return interval_curve(
        summary,
        x,
        hue,
        title=title,
        model=model,
        ax=ax,
        log2_x=log2_x,
        ylabel=ylabel or f"{y} (%)",
    )


def bars(
    frame: pd.DataFrame,
    x: str,
    y: str = "accuracy",
    hue: str | None = None,
    *,
    title: str,
    model: str,
    ax: plt.Axes | None = None,
    order: Sequence[str] | None = None,
    ylabel: str | None = None,
    horizontal: bool = False,
) -> plt.Axes:
    """Mean over seeds with its 95% interval (:func:`fewclip.evidence.summarize`, the
    tables' interval) as error bars (``horizontal`` is accepted; bars stand upright)."""
    from .evidence import summarize

    rows = done(frame)
    ok = len(rows) and y in rows and rows[y].notna().any()
    by = [x] + ([hue] if hue else [])
    summary = summarize(rows, by=by, value=y) if ok else pd.DataFrame()
    if order is not None and len(summary):
        rank = {n: i for i, n in enumerate(order)}
        summary = summary[summary[x].isin(rank)]
        summary = summary.iloc[summary[x].map(rank).argsort(kind="stable")]
    return interval_bars(
        summary, x, title=title, model=model, ax=ax, ylabel=ylabel or f"{y} (%)", hue=hue
    )


#: Written beside the figures when a saved figure has overlapping text (:func:`save`).
OVERLAPS_FILE = "figure_text_overlaps.json"


def save(fig: plt.Figure, out: str | Path, name: str) -> Path:
    """Write ``fig`` as ``<out>/<name>.png`` (tight bounding box). Texts whose boxes
    overlap (:func:`text_overlaps`) are listed in ``<out>/figure_text_overlaps.json`` under
    ``name`` (the notebook tests read it: every report figure must have none)."""
    import json

    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    overlaps = text_overlaps(fig)
    record = Path(out) / OVERLAPS_FILE
    found = json.loads(record.read_text()) if record.is_file() else {}
    found.pop(name, None)
    if overlaps:
        found[name] = [list(pair) for pair in overlaps]
    if found:
        record.write_text(json.dumps(found, indent=1))
    elif record.is_file():
        record.unlink()
    return path


def interval_curve(
    summary: pd.DataFrame,
    x: str,
    hue: str = "label",
    *,
    title: str,
    model: str,
    ax: plt.Axes | None = None,
    log2_x: bool = False,
    ylabel: str = "accuracy (%)",
) -> plt.Axes:
    """Mean over seeds per ``hue`` with its 95% interval as a band, from a
    :func:`fewclip.evidence.summarize` frame (columns ``mean``, ``ci_low``, ``ci_high``);
    the legend sits outside the axes, so it never covers data. Intervals are clipped to
    [0, 100]; with more than :data:`MAX_SERIES` lines and no ``ax`` given, the lines are
    split over panels (:func:`facets`) and the first panel's axes returned."""
    names = list(dict.fromkeys(summary[hue])) if len(summary) else []
    if ax is None and len(names) > MAX_SERIES:
        groups = facets(names)
        _, axes = plt.subplots(len(groups), 1, figsize=(7.5, 3.6 * len(groups)), squeeze=False)
        for i, (group, panel) in enumerate(zip(groups, axes[:, 0], strict=True)):
            interval_curve(
                summary[summary[hue].isin(group)],
                x,
                hue,
                title=f"{title} ({i + 1} of {len(groups)})",
                model=model,
                ax=panel,
                log2_x=log2_x,
                ylabel=ylabel,
            )
        axes[0, 0].figure.tight_layout()
        return axes[0, 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4))
    if len(summary):
        palette = sns.color_palette(n_colors=max(1, summary[hue].nunique()))
        for colour, (name, rows) in zip(palette, summary.groupby(hue, sort=False), strict=False):
            rows = rows.sort_values(x)
            low, high = clipped(rows)
            ax.plot(rows[x], rows["mean"], marker="o", color=colour, label=display_name(name))
            ax.fill_between(rows[x], low, high, color=colour, alpha=0.15)
        legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    if log2_x and len(summary):
        ax.set_xscale("log", base=2)
        ticks = sorted(summary[x].dropna().unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    titled(ax, title, model)
    return ax


def shows_nothing(summary: pd.DataFrame, x: str, hue: str = "label") -> str | None:
    """A sentence when a :func:`interval_curve` figure cannot show a difference: no
    finished runs, or along every line all points' 95% intervals overlap one another."""
    if not len(summary):
        return "The figure is empty: no run finished."
    flat = []
    for name, rows in summary.groupby(hue, sort=False):
        if rows[x].nunique() > 1 and rows["ci_low"].max() <= rows["ci_high"].min():
            flat.append(str(name))
    if flat and len(flat) == summary[hue].nunique():
        return (
            f"Along every line the 95% intervals of all {x} values overlap: at this scale the "
            f"figure shows no difference in {x} that the seeds and test images can resolve."
        )
    if flat:
        return f"Flat within its intervals (no resolvable effect of {x}): " + ", ".join(flat) + "."
    return None


# --------------------------------------------------------------------------- one figure style


def clipped(summary: pd.DataFrame, low: str = "ci_low", high: str = "ci_high"):
    """The interval columns of a summary clipped to [0, 100] (accuracies in %)."""
    return summary[low].clip(0, 100), summary[high].clip(0, 100)


def legend_outside(ax: plt.Axes, title: str | None = None) -> None:
    """The legend to the right of the axes (never over the data), display names."""
    handles, names = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(
        handles,
        [display_name(n) for n in names],
        title=title,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )


def facets(names: Sequence[str], per_panel: int = MAX_SERIES) -> list[list[str]]:
    """``names`` split into groups of at most ``per_panel`` (one panel each), the first
    name (the reference, e.g. zero-shot) repeated in every group."""
    names = list(dict.fromkeys(names))
    if len(names) <= per_panel:
        return [names]
    first, rest = names[0], names[1:]
    step = per_panel - 1
    return [[first, *rest[i : i + step]] for i in range(0, len(rest), step)]


def interval_bars(
    summary: pd.DataFrame,
    x: str = "label",
    *,
    title: str,
    model: str,
    ax: plt.Axes | None = None,
    ylabel: str = "accuracy (%)",
    hue: str | None = None,
) -> plt.Axes:
    """Bars of a :func:`fewclip.evidence.summarize` frame (``mean``) with its 95% interval
    (clipped to [0, 100]): the same interval as the tables, display names on the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4))
    if not len(summary):
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        titled(ax, title, model)
        return ax
    groups = list(dict.fromkeys(summary[hue])) if hue else [None]
    names = list(dict.fromkeys(summary[x]))
    width = 0.8 / len(groups)
    palette = sns.color_palette(n_colors=len(groups))
    for g, (group, colour) in enumerate(zip(groups, palette, strict=True)):
        part = summary if group is None else summary[summary[hue] == group]
        pos = [names.index(n) + (g - (len(groups) - 1) / 2) * width for n in part[x]]
        low, high = clipped(part)
        ax.bar(pos, part["mean"], width=width * 0.9, color=colour, label=display_name(group))
        ax.errorbar(
            pos,
            part["mean"],
            yerr=[part["mean"] - low, high - part["mean"]],
            fmt="none",
            ecolor="black",
            capsize=3,
            linewidth=1,
        )
    ax.set_xticks(range(len(names)), [display_name(n) for n in names], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if hue:
        legend_outside(ax, title=hue)
    titled(ax, title, model)
    return ax


def _drawn_texts(fig: plt.Figure) -> list[tuple[plt.Text, str]]:
    """The texts ``fig`` draws, each with a group: a tick label's group is its axis (so
    rotated tick labels of one axis, whose axis-aligned boxes always overlap, are not
    compared with each other); ticks outside the view and axes turned off are left out."""
    found: list[tuple[plt.Text, str]] = [(t, "figure") for t in fig.texts]
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle not in fig.texts:
        found.append((fig._suptitle, "figure"))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        texts = [ax.title, ax._left_title, ax._right_title, *ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
        found += [(t, f"axes{i}") for t in texts]
        if not ax.axison:
            continue
        found += [(ax.xaxis.label, f"axes{i}"), (ax.yaxis.label, f"axes{i}")]
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) * 1e-9
            group = f"axes{i}.{name}"
            found.append((axis.get_offset_text(), group))
            for tick in axis.get_major_ticks():
                if lo - span <= tick.get_loc() <= hi + span:
                    found += [(tick.label1, group), (tick.label2, group)]
    return found


def text_overlaps(fig: plt.Figure) -> list[tuple[str, str]]:
    """Pairs of drawn, non-empty texts of ``fig`` (titles, axis and tick labels, legend
    entries, annotations) whose rendered boxes overlap by more than a pixel, after a draw.
    Two rotated tick labels of one axis are not compared (their boxes are not their
    glyphs)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for text, group in _drawn_texts(fig):
        if not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            boxes.append((text.get_text(), group, bool(text.get_rotation() % 180), box))
    found = []
    for i, (a, group_a, rotated_a, box_a) in enumerate(boxes):
        for b, group_b, rotated_b, box_b in boxes[i + 1 :]:
            if group_a == group_b and "." in group_a and (rotated_a or rotated_b):
                continue
            inter_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            inter_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if inter_w > 1 and inter_h > 1:  # touching edges are not an overlap
                found.append((a, b))
    return found


def shared_scale(values: Sequence[Any]) -> tuple[float, float]:
    """One (vmin, vmax) for heatmaps that are compared (every panel on the same scale)."""
    import numpy as np

    arrays = [np.asarray(v, dtype=float) for v in values]
    finite = [a[np.isfinite(a)] for a in arrays if np.isfinite(a).any()]
    if not finite:
        return 0.0, 1.0
    return float(min(a.min() for a in finite)), float(max(a.max() for a in finite))
