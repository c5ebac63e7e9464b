"""The papers' numbers next to ours: ``data/paper_results.csv`` joined with sweep results.

    from fewclip import paper
    published = paper.load(paper="clip_adapter", protocol="few_shot")
    ours = paper.ours(frame, method_key={"CLIP-Adapter (visual)": "clip_adapter"})
    table = paper.side_by_side(published, ours)
    paper.show(table, paper.caption(published, ours, model))

``paper_results.csv`` has one published number per row: paper, method, backbone, protocol,
dataset, shots, metric, value, source. The papers evaluate RN50 / ViT-B/16 with OpenAI's
weights on their benchmarks (ImageNet, ...); the offline setting runs other datasets with
other models. :func:`side_by_side` therefore never puts the two in one column: the paper's
datasets and our datasets are separate column groups, and the caption says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .notebook import done, resolve

CSV = "data/paper_results.csv"
COLUMNS = (
    "paper",
    "method",
    "backbone",
    "protocol",
    "dataset",
    "shots",
    "metric",
    "value",
    "source",
)

#: Our record columns for the CSV's metric names.
METRIC_COLUMNS = {
    "acc": "accuracy",
    "base": "base_accuracy",
    "new": "new_accuracy",
    "hm": "hm",
}


def load(
    path: str | None = None,
    *,
    paper: str | Sequence[str] | None = None,
    method: str | Sequence[str] | None = None,
    protocol: str | Sequence[str] | None = None,
    metric: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    shots: int | Sequence[int] | None = None,
) -> pd.DataFrame:
    """The published numbers, filtered by any of the CSV's columns (a value or a list)."""
    frame = pd.read_csv(resolve(path or CSV))
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path or CSV}: missing column(s) {sorted(missing)}")
    filters = {
        "paper": paper,
        "method": method,
        "protocol": protocol,
        "metric": metric,
        "dataset": dataset,
        "shots": shots,
    }
    for column, wanted in filters.items():
        if wanted is None:
            continue
        values = [wanted] if isinstance(wanted, (str, int)) else list(wanted)
        frame = frame[frame[column].isin(values)]
    return frame.reset_index(drop=True)


def ours(
    frame: pd.DataFrame,
    *,
    method_key: Mapping[str, str] | None = None,
    metrics: Iterable[str] = ("acc",),
    label_column: str = "label",
) -> pd.DataFrame:
    """Our finished runs in the CSV's long form: mean and std over seeds per
    (method, dataset, shots, metric), with ``n`` seeds and a ``source`` naming the model.

    ``method_key`` maps our labels (variant or method name) to the CSV's method names and
    keeps only those rows; None keeps every row under its method name.
    """
    rows = done(frame)
    if not len(rows):
        return pd.DataFrame(columns=[*COLUMNS, "std", "n"])
    rows = rows.copy()
    if method_key is not None:
        rows = rows[rows[label_column].isin(list(method_key))]
        rows["key"] = rows[label_column].map(method_key)
    else:
        rows["key"] = rows["method"]
    out = []
    for metric in metrics:
        column = METRIC_COLUMNS.get(metric, metric)
        if column not in rows:
            continue
        grouped = rows.groupby(["key", "backbone", "protocol", "dataset", "shots"], sort=False)
        stats = grouped[column].agg(["mean", "std", "count"]).reset_index()
        labels = grouped["model_label"].first().reset_index(drop=True)
        out.append(
            pd.DataFrame(
                {
                    "paper": "ours",
                    "method": stats["key"],
                    "backbone": stats["backbone"],
                    "protocol": stats["protocol"],
                    "dataset": stats["dataset"],
                    "shots": stats["shots"],
                    "metric": metric,
                    "value": stats["mean"],
                    "std": stats["std"],
                    "n": stats["count"],
                    "source": "this repository's run store: " + labels,
                }
            )
        )
    return (
        pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=[*COLUMNS, "std", "n"])
    )


def side_by_side(
    published: pd.DataFrame,
    our_rows: pd.DataFrame,
    *,
    index: Sequence[str] = ("method", "shots"),
    model: str | None = None,
    metric_in_columns: bool = False,
    round_to: int = 2,
) -> pd.DataFrame:
    """One row per ``index`` (method, shots, ...); column groups
    ``("paper: <backbone>", <paper dataset>)`` and ``("ours: <backbone>", <our dataset>)``,
    never mixed, and ``("paper", "source")`` listing where each row's published numbers come
    from. Ours are means over seeds (the ``n`` of each is in ``our_rows``). ``model``: the
    label of our group (default: our backbone name), e.g. :func:`fewclip.notebook.model_tag`.
    """
    index = list(index)
    parts = []
    for side, rows in (("paper", published), ("ours", our_rows)):
        if not len(rows):
            continue
        rows = rows.copy()
        if side == "ours" and model:
            rows["group"] = f"ours: {model}"
        elif side == "ours":
            rows["group"] = "ours: " + rows["backbone"].astype(str)
        else:
            rows["group"] = "paper: " + rows["backbone"].astype(str) + " (OpenAI CLIP)"
        columns = ["group", "dataset"] + (["metric"] if metric_in_columns else [])
        if side == "paper" and rows.duplicated(index + columns).any():
            # two papers report the same cell (e.g. CoCoOp re-run by the APEX authors and
            # CoCoOp's own number): one column group per paper, never an average of both
            rows["group"] = rows["group"] + " [" + rows["paper"].astype(str) + "]"
        clash = rows[rows.duplicated(index + columns, keep=False)]
        if len(clash):
            raise ValueError(
                f"side_by_side: several {side} numbers for one cell; refine the filter:\n"
                + clash.to_string()
            )
        wide = rows.pivot_table(index=index, columns=columns, values="value", aggfunc="first")
        parts.append(wide)
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, axis=1)
    if len(published):
        sources = published.groupby(index)["source"].agg(lambda s: "; ".join(dict.fromkeys(s)))
        key = ("paper", "source") + (("",) if metric_in_columns else ())
        table[key] = sources.reindex(table.index).fillna("(no published number)")
    return table.round(round_to)


def caption(published: pd.DataFrame, our_rows: pd.DataFrame, model: str) -> str:
    """The table caption: what each side is, and that they are not comparable one-to-one."""
    paper_sets = ", ".join(dict.fromkeys(published["dataset"])) if len(published) else "none"
    paper_models = ", ".join(dict.fromkeys(published["backbone"])) if len(published) else "-"
    our_sets = ", ".join(dict.fromkeys(our_rows["dataset"])) if len(our_rows) else "none"
    return (
        f"Paper columns: published numbers ({paper_models}, OpenAI CLIP weights) on the "
        f"papers' benchmarks ({paper_sets}); the source column says where each comes from. "
        f"Our columns: this repository's runs on offline tasks ({our_sets}) with {model}. "
        "Different datasets and different models: the two groups sit side by side for "
        "orientation only and are NOT comparable one-to-one."
    )


def show(table: pd.DataFrame, text: str, precision: int = 2) -> Any:
    """The table as a pandas Styler with its caption (missing cells shown as '-')."""
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    return (
        table.style.format(precision=precision, na_rep="-", subset=numeric)
        .set_caption(text)
        .set_table_styles(
            [{"selector": "caption", "props": "caption-side: top; text-align: left;"}]
        )
    )
