"""``fewclip compare``: one row per configuration (mean +- std over seeds), the average over
datasets of each configuration, and the published number of the method's paper beside it.

Grouping is :func:`fewclip.evidence.summarize`'s: a configuration is every result-determining
field except the seed (method and resolved options, variant, weights identity, dataset and
its fingerprint, protocol, shots, selection, val split, label noise, ...), so two runs that
differ in an option or in the weights are never averaged; the fields that differ between
rows of the same (method, dataset, shots) are shown as columns.

Two records that resolve to the same run are one configuration (:func:`canonical_frame`):
``allow_fewer=True`` on a sample where no class was short (every class gave its K images)
is the run ``allow_fewer=False`` makes, and ``templates`` left unset is the method's own
default style. Rows are sorted (method label, dataset, shots, setting; the averages last).
The ``table`` format is narrow by default: the columns every row shares are left out and the
fields that tell rows apart are one ``setting`` column (``wide=True``, ``--wide``: every
column).

The average over datasets is taken per configuration without its dataset (the
dataset-dependent fields, ``dataset`` and ``data``, dropped): the mean of the per-dataset
means, with the number of datasets and their names, so averages over different dataset sets
are visible as such. Paper numbers come from ``data/paper_results.csv``
(:func:`fewclip.paper.load`): accuracy for few-shot and domain generalisation, the harmonic
mean for base-to-new; the method's own paper first. ``delta = ours - paper`` only where our
model is the paper's (same architecture, OpenAI weights); otherwise the paper number is
shown for reference and ``delta`` is empty.
"""

from __future__ import annotations

import math

import pandas as pd

from . import evidence as ev
from . import paper

#: Columns identifying a row of the comparison (besides the varying keys).
BY = ("label", "dataset", "shots")
#: Fields that depend only on the dataset: dropped when averaging over datasets.
DATASET_FIELDS = ("dataset", "data")
#: The paper whose numbers a method's row prefers.
OWN_PAPER = {
    "clip_adapter": "clip_adapter",
    "tip_adapter": "tip_adapter",
    "tip_adapter_f": "tip_adapter",
    "dual_adapter": "dual_adapter",
    "ape": "ape",
    "ape_t": "ape",
    "gda": "gda",
    "apex": "apex",
    "tomm": "tomm",
    "coop": "coop",
    "cocoop": "cocoop",
}
STATS = ("n_seeds", "seeds", "mean", "std", "ci_low", "ci_high")


def _arch(name: str) -> str:
    return str(name).replace("/", "-")


def _paper_number(row: dict, value: str) -> tuple[float, str, str]:
    """(published value, its backbone, its source) for a row, or (nan, '', '')."""
    metric = "hm" if row["protocol"] == "base_to_new" and value == "accuracy" else "acc"
    try:
        found = paper.load(
            method=row["method"],
            protocol=row["protocol"],
            dataset=row["dataset"],
            shots=int(row["shots"]),
            metric=metric,
        )
    except (FileNotFoundError, ValueError):
        return math.nan, "", ""
    if not len(found):
        return math.nan, "", ""
    same = found[found["backbone"].map(_arch) == _arch(row["backbone"])]
    pick = same if len(same) else found
    own = pick[pick["paper"] == OWN_PAPER.get(row["method"], "")]
    best = (own if len(own) else pick).iloc[0]
    return float(best["value"]), str(best["backbone"]), f"{best['paper']}: {best['source']}"


def _is_papers_model(row: dict, paper_backbone: str) -> bool:
    pretrained = str(row.get("pretrained", ""))
    openai = pretrained == "openai" or pretrained.endswith("-quickgelu") or pretrained == "default"
    return bool(paper_backbone) and _arch(paper_backbone) == _arch(row["backbone"]) and openai


def _full_sample(record: dict) -> bool:
    """Whether every class of a run's few-shot sample gave its K images (readable ones
    counted), so ``allow_fewer`` changed nothing."""
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return False
    used, per_class = metrics.get("train_images"), metrics.get("per_class_accuracy")
    shots = record.get("shots")
    if used is None or not isinstance(per_class, list) or shots is None:
        return False
    return int(used) >= int(shots) * len(per_class)


def canonical_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each record's ``config`` written the way its run resolved it:
    ``allow_fewer`` False where the sample was full, ``templates`` the method's default
    style where unset. Records that differ only there then form one configuration."""
    if "config" not in frame:
        return frame
    from .methods import METHODS

    out = frame.copy()
    configs = []
    for record in out.to_dict("records"):
        cfg = record.get("config")
        if not isinstance(cfg, dict):
            configs.append(cfg)
            continue
        cfg = dict(cfg)
        if cfg.get("allow_fewer") and _full_sample(record):
            cfg["allow_fewer"] = False
        method = METHODS.get(str(cfg.get("method")))
        if cfg.get("templates") is None and method is not None:
            cfg["templates"] = getattr(method, "default_templates", None)
        configs.append(cfg)
    out["config"] = configs
    return out


def compare_table(frame: pd.DataFrame, value: str = "accuracy", average: bool = True):
    """The comparison of a results-store frame (``ResultStore.to_frame(expand=False)``),
    sorted; records that resolve to the same run merged (:func:`canonical_frame`)."""
    frame = canonical_frame(frame)
    summary = ev.summarize(frame, by=BY, value=value, n_boot=200)
    if not len(summary):
        return summary
    keyed = ev.configurations(frame).drop_duplicates("config_id").set_index("config_id")
    for column in ("method", "protocol", "backbone", "pretrained"):
        if column not in summary:
            summary[column] = summary["config_id"].map(keyed[column])
    keys = [
        c
        for c in summary.columns
        if c not in (*STATS, "interval", "test_images", "duplicates", "config_id")
    ]
    rows = []
    for row in summary.to_dict("records"):
        number, backbone, source = _paper_number(row, value)
        papers_model = _is_papers_model(row, backbone)
        rows.append(
            {
                **{k: row[k] for k in keys},
                **{k: row[k] for k in STATS},
                "n_datasets": 1,
                "paper": number,
                "paper_backbone": backbone,
                "delta": row["mean"] - number
                if papers_model and math.isfinite(number)
                else math.nan,
                "paper_source": source,
            }
        )
    table = _sorted(pd.DataFrame(rows), keys)
    if average:
        table = pd.concat([table, _sorted(_averages(table, keys), keys)], ignore_index=True)
    return table


def _sorted(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows by method label, dataset, shots, then the other keys (as text)."""
    if not len(table):
        return table
    order = [k for k in (*BY, *keys) if k in table]
    order = list(dict.fromkeys(order))
    text = table[order].astype(str)
    if "shots" in table:
        text["shots"] = pd.to_numeric(table["shots"], errors="coerce")
    index = text.sort_values(order, kind="stable").index
    return table.loc[index].reset_index(drop=True)


def _averages(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per configuration without its dataset: the mean over datasets (2 or more)."""
    rest = [k for k in keys if k not in DATASET_FIELDS]
    out = []
    filled = table[rest].astype(str)
    for _, index in filled.groupby(rest, sort=False).groups.items():
        group = table.loc[index]
        if group["dataset"].nunique() < 2:
            continue
        first = group.iloc[0]
        datasets = sorted(group["dataset"].unique())
        out.append(
            {
                **{k: first[k] for k in rest},
                "dataset": f"average ({', '.join(datasets)})",
                "n_datasets": len(datasets),
                "n_seeds": int(group["n_seeds"].min()),
                "mean": float(group["mean"].mean()),
                "std": math.nan,
                "paper": math.nan,
                "delta": math.nan,
                "paper_backbone": "",
                "paper_source": "",
            }
        )
    return pd.DataFrame(out)


#: The one symbol of a missing value in the shown table.
MISSING = "-"
#: Key columns the narrow table always shows (where present).
NARROW = ("label", "dataset", "shots")
#: Fields shown shortened in the narrow ``setting`` column (hashes).
HASHED = ("weights", "data")


def _setting(row: pd.Series, columns: list[str]) -> str:
    """``name=value`` of the given fields of one row (``options.`` dropped, hashes cut)."""
    parts = []
    for c in columns:
        value = row[c]
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            continue
        if c == "method" and value == row.get("label"):
            continue  # the label says it
        text = str(value)[:8] if c in HASHED else str(value)
        parts.append(f"{c.removeprefix('options.')}={text}")
    return " ".join(parts)


def display_frame(table: pd.DataFrame, wide: bool = True) -> pd.DataFrame:
    """The table as shown: key columns, ``mean +- std`` (seeds), paper and delta.
    ``wide=False``: ``label``, ``dataset``, ``shots``, the columns that vary as one
    ``setting`` column (those every row shares left out), an average's dataset list as
    its count."""
    keys = [
        c
        for c in table.columns
        if c not in (*STATS, "n_datasets", "paper", "delta", "paper_backbone", "paper_source")
    ]
    if not wide:
        rest = [k for k in keys if k not in NARROW]
        varying = [k for k in rest if table[k].astype(str).nunique() > 1]
        narrow = table[[k for k in NARROW if k in table]].copy()
        if "dataset" in narrow and "n_datasets" in table:
            narrow["dataset"] = [
                f"average of {int(n)}" if n > 1 else d
                for d, n in zip(table["dataset"], table["n_datasets"].fillna(1), strict=True)
            ]
        if varying:
            narrow["setting"] = [_setting(row, varying) for _, row in table.iterrows()]
        table = pd.concat([narrow, table.drop(columns=keys)], axis=1)
        keys = list(narrow.columns)

    def fmt(x: float, signed: bool = False) -> str:
        if x is None or not math.isfinite(float(x)):
            return MISSING
        return f"{x:+.2f}" if signed else f"{x:.2f}"

    shown = table[keys].copy()
    shown["mean +- std"] = [
        fmt(m) + (f" +- {s:.2f}" if math.isfinite(s) else "")
        for m, s in zip(table["mean"], table["std"], strict=True)
    ]
    shown["seeds"] = table["n_seeds"]
    shown["paper"] = [
        fmt(p) + (f" ({b})" if b and math.isfinite(p) else "")
        for p, b in zip(table["paper"], table["paper_backbone"], strict=True)
    ]
    shown["delta"] = [fmt(d, signed=True) for d in table["delta"]]
    return shown.fillna("")


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\\\|")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body])


def export(table: pd.DataFrame, fmt: str, wide: bool = False) -> str:
    """``csv`` (every number, machine-readable), ``markdown``, ``latex`` or ``table``
    (narrow unless ``wide``; csv always has every column)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    shown = display_frame(table, wide=wide)
    if fmt == "markdown":
        return _markdown(shown)
    if fmt == "latex":
        return shown.to_latex(index=False)
    return shown.to_string(index=False)
