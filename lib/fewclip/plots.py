"""Figures for the paper notebooks (seaborn over sweep frames); no computation of methods.

Every figure takes a ``model`` string (:func:`fewclip.notebook.model_tag`) and puts it in
the title, so a figure cut out of a report still says which model produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .notebook import done

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
    """Mean over seeds with a +-1 std band, one line per ``hue``."""
    rows = done(frame)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    if len(rows) and rows[y].notna().any():
        sns.lineplot(
            data=rows,
            x=x,
            y=y,
            hue=hue,
            style=style or hue,
            markers=True,
            dashes=False,
            errorbar="sd",
            ax=ax,
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    if log2_x:
        ax.set_xscale("log", base=2)
        ticks = sorted(rows[x].dropna().unique()) if len(rows) else []
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_ylabel(ylabel or f"{y} (%)")
    titled(ax, title, model)
    return ax


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
    """Mean over seeds with std error bars."""
    rows = done(frame)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if len(rows) and rows[y].notna().any():
        kw = {"x": y, "y": x} if horizontal else {"x": x, "y": y}
        sns.barplot(data=rows, hue=hue, order=order, errorbar="sd", ax=ax, **kw)
        if not horizontal:
            ax.tick_params(axis="x", rotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel or f"{y} (%)")
    titled(ax, title, model)
    return ax


def save(fig: plt.Figure, out: str | Path, name: str) -> Path:
    """Write ``fig`` as ``<out>/<name>.png`` (tight bounding box)."""
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    the legend sits outside the axes, so it never covers data."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4))
    if len(summary):
        palette = sns.color_palette(n_colors=max(1, summary[hue].nunique()))
        for colour, (name, rows) in zip(palette, summary.groupby(hue, sort=False), strict=False):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows["mean"], marker="o", color=colour, label=str(name))
            ax.fill_between(rows[x], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
