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
datasets and our datasets are separate column groups, and the caption says so. Our cells
read ``mean +- std [95% interval] n=seeds`` (:mod:`fewclip.evidence`).
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

#: Published numbers this project looked for and could not read, with the reason; shown by
#: :func:`missing` so a table without them says so instead of staying silent.
MISSING = {
    "dual_adapter": (
        "DualAdapter's (arXiv 2403.12964v1) and SimNL's (v2) per-dataset few-shot and "
        "domain-generalisation tables are not in data/paper_results.csv: the stored copies of "
        "the arXiv HTML available to this project expose only the pages' opening sections, and "
        "the official repositories (zhangce01/DualAdapter, zhangce01/SimNL) publish no numbers; "
        "add them from the paper's tables when a copy is at hand"
    ),
    "tomm": (
        "TOMM's (arXiv 2303.17169) per-dataset base-to-new numbers are not in "
        "data/paper_results.csv (only the average gains over CoCoOp its abstract states): the "
        "stored copy of the paper exposes no tables"
    ),
    "taskres": (
        "TaskRes's (CVPR 2023) per-dataset numbers are not in data/paper_results.csv: the "
        "official repository (geekyutao/TaskRes) publishes no numbers and no copy of the "
        "paper's tables was available to this project"
    ),
    "lp_pp": (
        "LP++'s (CVPR 2024) per-dataset numbers are not in data/paper_results.csv: the "
        "official repository (FereshteShakeri/FewShot-CLIP-Strong-Baseline) publishes no "
        "numbers and no copy of the paper's tables was available to this project"
    ),
    "clap": (
        "CLAP's and ZS-LP's (CVPR 2024) per-dataset numbers are not in data/paper_results.csv: "
        "the official repository (jusiro/CLAP) publishes no numbers and no copy of the "
        "paper's tables was available to this project"
    ),
    "gda": (
        "GDA's numbers come from its official repository's logs (mrflogs/ICLR24: exp.log for "
        "the RN50 few-shot curves of Figure 1, logs/base2new.log for ViT-B/16 base-to-new); "
        "its robustness (ImageNet variants) and other-backbone tables are not in "
        "data/paper_results.csv"
    ),
}


def missing(paper_name: str) -> str | None:
    """Why a paper's published numbers are (partly) missing from the CSV, or None."""
    return MISSING.get(paper_name)


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
    configuration and metric, with ``n`` seeds, the 95% interval (``ci_low``, ``ci_high``:
    :func:`fewclip.evidence.summarize`) and a ``source`` naming the model.

    ``method_key`` maps our labels (variant or method name) to the CSV's method names and
    keeps only those rows; None keeps every row under its method name. Two configurations
    under one key (e.g. different options) stay two rows, never one average; the table
    then refuses the clash (:func:`side_by_side`)."""
    from . import evidence

    rows = done(frame)
    empty = pd.DataFrame(columns=[*COLUMNS, "std", "n", "ci_low", "ci_high"])
    if not len(rows):
        return empty
    rows = rows.copy()
    if method_key is not None:
        rows = rows[rows[label_column].isin(list(method_key))]
        rows["key"] = rows[label_column].map(method_key)
    else:
        rows["key"] = rows["method"]
    if not len(rows):
        return empty
    labels = rows.groupby("key")["model_label"].first() if "model_label" in rows else None
    out = []
    for metric in metrics:
        column = METRIC_COLUMNS.get(metric, metric)
        if column not in rows:
            continue
        stats = evidence.summarize(
            rows, by=["key", "backbone", "protocol", "dataset", "shots"], value=column
        )
        if not len(stats):
            continue
        model = stats["key"].map(labels) if labels is not None else ""
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
                    "n": stats["n_seeds"],
                    "ci_low": stats["ci_low"],
                    "ci_high": stats["ci_high"],
                    "source": "this repository's run store: " + model.astype(str),
                }
            )
        )
    return pd.concat(out, ignore_index=True) if out else empty


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
        if side == "ours" and "ci_low" in rows:  # ours with spread and interval, as text
            rows["value"] = [
                _with_interval(v, sd, n, lo, hi)
                for v, sd, n, lo, hi in zip(
                    rows["value"], rows["std"], rows["n"], rows["ci_low"], rows["ci_high"],
                    strict=True,
                )
            ]  # fmt: skip
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


def _with_interval(value: float, std: float, n: float, low: float, high: float) -> Any:
    """``mean +- std [low, high] n=seeds`` text; the bare value for a row without interval
    (e.g. one a notebook adds by hand)."""
    import math

    from .evidence import format_interval

    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (n, low, high)):
        return value
    return format_interval(value, std, low, high, int(n), digits=1)


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
        + (
            " Ours: mean +- std over seeds [95% interval] n=seeds; the interval combines a "
            "bootstrap over test images with the seed spread."
            if "ci_low" in our_rows
            else ""
        )
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
