"""Helpers for the paper notebooks: paths, the model banner, sweeps that never crash.

    from fewclip import notebook as nb
    nb.show_banner(backbone, pretrained, datasets)       # which model and data made the numbers
    base = nb.base_config(backbone=..., pretrained=..., data_root=..., cache_dir=..., device=...)
    frame = nb.run_grid(configs, results, workers=workers, scheduler=scheduler)

Relative paths are resolved against the project root (the folder holding ``pyproject.toml``
and ``data/``), found by searching upward from the working directory, so the same
parameters work from the repository root (papermill) and from ``notebooks/`` (JupyterLab);
outside any checkout, against the working directory itself (the banner says which).
Nothing here computes a method: notebooks orchestrate, ``fewclip.runner`` runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import pandas as pd

from .backbones import (
    PROJECT_WEIGHTS,
    RANDOM_INIT,
    UnknownBackboneError,
    WeightsNotFoundError,
    resolve_weights,
)
from .config import PUBLISHED_ROOT_VAR, RunConfig

# --------------------------------------------------------------------------- paths


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    both ``pyproject.toml`` and ``data/``; else ``start`` itself.

    Never the checkout fewclip is installed from: papermill run from a folder outside the
    checkout reads and writes under that folder (as every command-line tool does with a
    relative path), not silently in the installed checkout. :func:`paths_note` says which
    root the notebook uses.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "data").is_dir():
            return folder
    return here


def paths_note() -> str:
    """Markdown naming the folder relative paths resolve against (shown in the banner)."""
    root = project_root()
    if Path(os.getcwd()).resolve() == root and not (root / "pyproject.toml").is_file():
        kind = "the working directory (no fewclip checkout at or above it)"
    else:
        kind = "the project root"
        if os.environ.get(PUBLISHED_ROOT_VAR):  # a published report: no path of the build machine
            return f"**Paths:** relative paths resolve against {kind} (the fewclip checkout)."
    return f"**Paths:** relative paths resolve against {kind}, `{root}`."


def resolve(path: str | os.PathLike | None) -> str | None:
    """An absolute path as is; a relative one under :func:`project_root`; None stays None."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else project_root() / p)


def output_dir(path: str | os.PathLike) -> Path:
    """The notebook's output folder (resolved, created)."""
    out = Path(resolve(path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def listify(value: Any, kind: type | None = None) -> list:
    """A list parameter from what papermill may pass: a list, one value, or a string such as
    ``"[1, 2, 4]"`` or ``"1,2,4"`` (``-p shots 8`` gives ``[8]``; ``-y`` gives real lists).
    ``kind`` converts each item (e.g. ``int``)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            import ast

            value = ast.literal_eval(text)
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    items = list(value)
    return [kind(v) for v in items] if kind is not None else items


# --------------------------------------------------------------------------- model banner


def model_kind(backbone: str, pretrained: str | None = "default") -> str:
    """``"random"`` (random init), ``"toy"`` (fewclip's own tiny CLIP), ``"pretrained"``
    (open_clip or a checkpoint file) or ``"missing"`` (weights not on this machine)."""
    if pretrained in RANDOM_INIT:
        return "random"
    try:
        weights = resolve_weights(backbone, pretrained)
    except (WeightsNotFoundError, UnknownBackboneError):
        return "missing"
    if weights is None:
        return "random"
    if backbone in PROJECT_WEIGHTS and (pretrained in ("default", backbone)):
        return "toy"
    return "pretrained"


def _source(source: Any, pretrained: str | None) -> tuple[str, str | None]:
    """(arch, pretrained) from a record dict, a results row, a Backbone or a name."""
    if isinstance(source, str):
        return source, pretrained
    if isinstance(source, dict) or isinstance(source, pd.Series):
        pre = source.get("pretrained", pretrained)
        return str(source["backbone"]), None if pre in (None, "None") else pre
    arch = getattr(source, "arch", None)
    if arch is not None:  # a fewclip Backbone
        return arch, source.pretrained if source.is_pretrained else None
    raise TypeError(f"model_banner: cannot tell the model of {type(source).__name__}")


def model_tag(source: Any, pretrained: str | None = "default") -> str:
    """A short label for figure titles and table captions."""
    arch, pre = _source(source, pretrained)
    kind = model_kind(arch, pre)
    if kind == "random":
        return f"{arch}, RANDOM INIT: numbers are not meaningful"
    if kind == "toy":
        return f"{arch}: toy-scale CLIP pretrained by fewclip, NOT OpenAI CLIP"
    if kind == "missing":
        return f"{arch}/{pre}: weights MISSING"
    return f"{arch}/{pre}"


def data_summary(datasets: Iterable[str]) -> str:
    """One line on where the datasets come from (offline tasks or real benchmarks)."""
    from .offline import TASKS

    names = list(dict.fromkeys(datasets))
    offline = [n for n in names if n in TASKS]
    other = [n for n in names if n not in TASKS]
    parts = []
    if offline:
        parts.append(
            "offline task(s) built by `fewclip.offline` from package-registry data ("
            + ", ".join(f"`{n}`" for n in offline)
            + "): NOT the papers' benchmarks"
        )
    if other:
        parts.append("dataset(s) " + ", ".join(f"`{n}`" for n in other))
    return "; ".join(parts) or "no dataset"


def model_banner(
    source: Any, pretrained: str | None = "default", datasets: Iterable[str] = ()
) -> str:
    """Markdown saying which model and data produced a notebook's numbers.

    ``source``: a record dict or results row, a :class:`~fewclip.backbones.Backbone`, or an
    architecture name (with ``pretrained``). A random-init model or fewclip's toy-scale
    tiny CLIP is said loudly.
    """
    arch, pre = _source(source, pretrained)
    if isinstance(source, (dict, pd.Series)) and not datasets and "dataset" in source:
        datasets = [source["dataset"]]
    kind = model_kind(arch, pre)
    if kind == "random":
        head = (
            f"**WARNING: `{arch}` is a RANDOMLY INITIALISED model.** Every number below "
            "comes from untrained weights and is NOT meaningful; it only shows that the "
            "pipeline runs."
        )
    elif kind == "toy":
        size = open_clip.get_model_config(arch)["vision_cfg"].get("image_size", "?")
        head = (
            f"**Model: `{arch}`, a TOY-SCALE CLIP pretrained by fewclip on emoji images "
            f"(NOT OpenAI CLIP).** A small model with {size}-pixel inputs: the numbers below "
            "say how the methods behave on this model and data, not what the papers report "
            "for RN50 / ViT-B/16 with OpenAI's weights."
        )
    elif kind == "missing":
        head = f"**Model `{arch}` / `{pre}`: weights are MISSING on this machine.**"
    else:
        head = f"**Model: `{arch}` with weights `{pre}`.**"
    return head + "\n\n**Data:** " + data_summary(datasets) + "."


def show_banner(
    source: Any, pretrained: str | None = "default", datasets: Iterable[str] = ()
) -> None:
    """Display :func:`model_banner` as Markdown (a notebook's first output)."""
    from IPython.display import Markdown, display

    display(Markdown(model_banner(source, pretrained, datasets) + "\n\n" + paths_note()))


def check_model(backbone: str, pretrained: str | None = "default") -> None:
    """Raise the backbone's own clear error (what is missing, how to get it) before a sweep
    in which every run would fail for the same reason."""
    resolve_weights(backbone, pretrained)


# --------------------------------------------------------------------------- runs


def set_threads(threads: int | None) -> None:
    """Torch CPU threads of this kernel (None: leave torch's default, one per core).

    The tiny models' operations are too small to gain from several threads, and on a
    machine shared with other jobs several threads spin against each other: one thread was
    3-5x faster for the default runs on 2 shared cores."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


class DataRootError(FileNotFoundError):
    """No data root where a notebook looks: shown in Jupyter as its one-line message."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def data_root_for(data_root: str | os.PathLike = "data") -> str:
    """The notebook's data root, absolute: a relative one under :func:`project_root`; where
    that folder does not exist, ``$FEWCLIP_DATA`` if set; where neither exists and the
    notebook is outside a fewclip checkout, :class:`DataRootError` saying in one line to set
    ``data_root`` (or ``FEWCLIP_DATA``)."""
    resolved = resolve(data_root) or ""
    if Path(resolved).is_dir() or Path(data_root).expanduser().is_absolute():
        return resolved
    from .config import DATA_ROOT_VAR

    if os.environ.get(DATA_ROOT_VAR) and Path(os.environ[DATA_ROOT_VAR]).expanduser().is_dir():
        return str(Path(os.environ[DATA_ROOT_VAR]).expanduser().resolve())
    if not (project_root() / "pyproject.toml").is_file():
        raise DataRootError(
            f"no data root at {resolved} (this notebook runs outside a fewclip checkout): set "
            f"`data_root` in the parameters cell, or the environment variable {DATA_ROOT_VAR}, "
            "to the folder `fewclip prepare --data-root ...` filled"
        )
    return resolved


def base_config(
    *,
    data_root: str = "data",
    cache_dir: str | None = "cache",
    **fields: Any,
) -> RunConfig:
    """A RunConfig from notebook parameters, with the data root (:func:`data_root_for`) and
    cache resolved."""
    return RunConfig(
        data_root=data_root_for(data_root),
        cache_dir=resolve(cache_dir) or "",
        progress=False,
        **fields,
    )


def run_grid(
    configs: Sequence[RunConfig],
    results: str | None,
    *,
    workers: int = 1,
    scheduler: Any = None,
    title: str = "runs",
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`fewclip.sweep.run_sweep` over ``configs`` with the results store ``results``;
    failed runs are shown as a table (status, error) and the notebook goes on.

    The frame has one row per configuration, in order, with ``status`` ("done"/"failed"),
    ``label`` (the variant, else the method) and the record's columns. If every run of
    every grid so far in this kernel failed, it raises RuntimeError (a notebook whose runs
    all fail fails); the count line carries ``metadata[RUNS_METADATA]`` for the reports.
    """
    from IPython.display import Markdown, display

    from .sweep import run_sweep

    if not len(configs):
        raise ValueError(
            f"{title}: no configurations to run, a list parameter is empty (e.g. papermill "
            "-p lams '[]'); give it at least one value"
        )
    frame = run_sweep(
        configs, resolve(results), workers=workers, scheduler=scheduler, progress=progress
    )
    frame = frame.reset_index(drop=True)
    for k in ("accuracy", "base_accuracy", "new_accuracy", "hm"):
        if k not in frame:
            frame[k] = float("nan")
    frame["label"] = labels(frame)
    bad = failures(frame)
    done = int((frame["status"] == "done").sum())
    reused = int(frame.get("skipped", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    display(
        Markdown(
            f"*{title}: {done} of {len(frame)} runs done ({reused} reused from the store), "
            f"{len(bad)} failed.*"
        ),
        # read by fewclip.reports: the report's first lines and the index count failed runs
        metadata={RUNS_METADATA: {"title": title, "runs": len(frame), "failed": len(bad)}},
    )
    _TALLY["runs"] += len(frame)
    _TALLY["failed"] += len(bad)
    if len(bad):
        display(Markdown(f"**{len(bad)} run(s) failed; the figures below leave them out:**"))
        display(bad)
    if len(frame) and _TALLY["failed"] == _TALLY["runs"]:
        first = str(bad["error"].iloc[0])
        raise RuntimeError(
            f"every run so far failed ({_TALLY['failed']} of {_TALLY['runs']}); nothing to "
            f"show. First error: {first}"
        )
    return frame


#: Output metadata key of :func:`run_grid`'s count line (read by fewclip.reports).
RUNS_METADATA = "fewclip_runs"

#: Output metadata key of :func:`show_base_check`'s sentences (fewclip.reports puts them in
#: the report's first lines).
BASE_CHECK_METADATA = "fewclip_below_zero_shot"


def show_base_check(
    frame: pd.DataFrame, causes: dict[str, str] | None = None, model: str = ""
) -> pd.DataFrame:
    """Show which trained methods end below zero-shot on their own training classes
    (:func:`fewclip.evidence.below_zero_shot`, ``causes``: label or method -> cause), one
    sentence each, tagged so that the report's first lines repeat them; returns the table."""
    from IPython.display import Markdown, display

    from .evidence import below_zero_shot, below_zero_shot_lines

    table = below_zero_shot(frame, causes)
    lines = below_zero_shot_lines(table, model)
    display(Markdown("\n\n".join(lines)), metadata={BASE_CHECK_METADATA: lines})
    if len(table):  # the label names the method (its id would be a second "method")
        display(Table(table.drop(columns="method")))
    return table


#: Runs and failures of every :func:`run_grid` in this kernel: a notebook whose runs all
#: failed stops with an error (papermill exits non-zero) instead of showing empty figures.
_TALLY = {"runs": 0, "failed": 0}


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    """The failed rows of a sweep frame: what ran and why it failed."""
    if not len(frame) or "status" not in frame:
        return pd.DataFrame(columns=["method", "variant", "dataset", "shots", "seed", "error"])
    cols = [c for c in ("method", "variant", "dataset", "protocol", "shots", "seed") if c in frame]
    return frame.loc[frame["status"] == "failed", cols + ["status", "error"]]


def done(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished rows of a sweep frame."""
    if not len(frame) or "status" not in frame:
        return frame
    return frame[frame["status"] == "done"]


def option(frame: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """The method option ``name`` each row's configuration asked for (None: not given)."""
    return frame["config"].map(lambda c: (c or {}).get("options", {}).get(name, default))


#: What each validation mode (``RunConfig.val``) means, as a caption says it.
VAL_MODES = {
    "few_shot": "few-shot val (min(K, 4) images per class)",
    "full": "the whole val split",
    "none": "NO validation data (val='none': each method's fixed, documented setting)",
}


def val_modes(source: Any) -> list[str]:
    """The validation modes (``RunConfig.val``) of ``source``: a mode name, a list of
    them, or a run frame (its ``val`` column, else each row's ``config["val"]``); in
    order of first appearance, rows without one left out."""
    if isinstance(source, str):
        values: list[Any] = [source]
    elif isinstance(source, pd.DataFrame):
        if "val" in source:
            values = list(source["val"])
        elif "config" in source:
            values = [c.get("val") if isinstance(c, dict) else None for c in source["config"]]
        else:
            values = []
    else:
        values = list(source or ())
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and v))


def val_note(source: Any, always: bool = False) -> str:
    """A caption sentence naming the validation mode of ``source`` (see :func:`val_modes`).

    Runs with ``val="none"`` are always named (alone, or beside the other modes when a
    table mixes them); otherwise the sentence is empty unless ``always``."""
    modes = val_modes(source)
    if not modes or ("none" not in modes and not always):
        return ""
    said = [VAL_MODES.get(m, f"val={m!r}") for m in modes]
    if len(said) == 1:
        return f"Validation: {said[0]}."
    return "Validation differs between these runs: " + "; ".join(said) + "."


def store_frame(results: str | None) -> pd.DataFrame:
    """Every run in the results store (empty frame when there is no store yet)."""
    from .results import ResultStore

    path = resolve(results)
    if path is None or not Path(path).is_file():
        return pd.DataFrame()
    frame = ResultStore(path).to_frame()
    if len(frame):
        frame["label"] = labels(frame)
    return frame


def labels(frame: pd.DataFrame) -> list[str]:
    """Each row's label: its variant (an ablation's name) if it has one, else its method."""
    return [
        v if isinstance(v, str) and v else m
        for v, m in zip(frame["variant"], frame["method"], strict=True)
    ]


# --------------------------------------------------------------------------- encoder runs


def expand_variants(frame: pd.DataFrame, prefix: str = "APEX") -> pd.DataFrame:
    """One row per inference-time variant stored in a record (``metrics[...]["variants"]``:
    APEX's ensemble settings scored on one trained model, ``variants=True``).

    Each row carries that variant's accuracies and per-image correctness (so
    :mod:`fewclip.evidence` gives its interval), the label ``"<prefix> (<variant>)"``,
    and options naming it (``ensemble``, ``alpha``), so two variants are never averaged.
    Runs without variants are left out."""
    from .metrics import harmonic_mean

    rows = []
    for r in done(frame).to_dict("records"):
        m = r.get("metrics") or {}
        b2n = isinstance(m.get("base"), dict) and isinstance(m.get("new"), dict)
        parts = {"base": m["base"], "new": m["new"]} if b2n else {"": m}
        found = {k: (p.get("variants") or {}) for k, p in parts.items()}
        if not all(found.values()):
            continue
        for name in next(iter(found.values())):
            options = dict(r.get("options") or {})
            if name.startswith("alpha="):
                options.update(ensemble="both", alpha=float(name.split("=", 1)[1]))
            else:
                options.update(ensemble=name, alpha=None)
            label = f"{prefix} ({name})"
            row = {
                **r,
                "variant": label,
                "label": label,
                "options": options,
                "run_key": f"{r.get('run_key', '')}:{name}",
                "config": {**(r.get("config") or {}), "variant": label},
            }
            metrics = dict(m)
            if b2n:
                b, n = found["base"][name], found["new"][name]
                metrics.update(base=b, new=n)
                row.update(
                    base_accuracy=b["accuracy"],
                    new_accuracy=n["accuracy"],
                    hm=harmonic_mean(b["accuracy"], n["accuracy"]),
                )
                row["accuracy"] = row["hm"]
            else:
                v = found[""][name]
                metrics.update(v)
                row["accuracy"] = v["accuracy"]
            row["metrics"] = metrics
            rows.append(row)
    return pd.DataFrame(rows)


def epoch_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The training curves of finished runs, long: one row per (run, epoch) with ``label``,
    ``dataset``, ``seed``, ``epoch``, ``loss``, ``val_acc``, ``lr`` and ``chosen`` (whether
    it is the epoch the run kept), from each record's ``history``."""
    rows = []
    for r in done(frame).to_dict("records"):
        history = r.get("history")
        if not isinstance(history, list) or not history:
            continue
        best = (r.get("chosen") or {}).get("best_epoch")
        for h in history:
            rows.append(
                {
                    "label": r.get("label") or r.get("method"),
                    "dataset": r.get("dataset"),
                    "seed": r.get("seed"),
                    **{k: h.get(k) for k in ("epoch", "loss", "val_acc", "lr")},
                    "chosen": h.get("epoch") == best,
                }
            )
    return pd.DataFrame(
        rows, columns=["label", "dataset", "seed", "epoch", "loss", "val_acc", "lr", "chosen"]
    )


def chosen_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """Per label: runs, epochs trained, how many runs kept epoch 0, and the chosen epochs."""
    rows = []
    for label, group in done(frame).groupby("label", sort=False):
        chosen = [(c or {}).get("best_epoch") for c in group["chosen"]]
        chosen = [int(c) for c in chosen if c is not None]
        if not chosen:
            continue
        epochs = [len(h) for h in group["history"] if isinstance(h, list)]
        rows.append(
            {
                "label": label,
                "runs": len(chosen),
                "epochs": max(epochs) if epochs else None,
                "chose epoch 0": sum(c == 0 for c in chosen),
                "chosen epochs": ", ".join(map(str, sorted(chosen))),
            }
        )
    return pd.DataFrame(rows, columns=["label", "runs", "epochs", "chose epoch 0", "chosen epochs"])


# --------------------------------------------------------------------------- report style
#
# One table style for every report (:func:`show_table`), the interval's method stated once
# (:func:`how_to_read`), the conclusions first (:func:`show_conclusions`, lifted to the top
# of the published page by fewclip.reports) and the setup (:func:`show_setup`).

#: The one symbol for a missing value in every report table.
MISSING = "–"

#: Internal ids (methods, variants, metrics) -> the names a reader sees.
DISPLAY_NAMES = {
    "zero_shot": "Zero-shot CLIP",
    "linear_probe": "Linear probe",
    "clip_adapter": "CLIP-Adapter",
    "tip_adapter": "Tip-Adapter",
    "tip_adapter_f": "Tip-Adapter-F",
    "dual_adapter": "DualAdapter",
    "ape": "APE",
    "ape_t": "APE-T",
    "gda": "GDA",
    "taskres": "TaskRes",
    "lp_pp": "LP++",
    "clap": "CLAP",
    "zs_lp": "ZS-LP",
    "coop": "CoOp",
    "cocoop": "CoCoOp",
    "prograd": "ProGrad",
    "kgcoop": "KgCoOp",
    "maple": "MaPLe",
    "promptsrc": "PromptSRC",
    "proda": "ProDA",
    "clip_lora": "CLIP-LoRA",
    "apex": "APEX",
    "tomm": "TOMM",
}

#: Column names -> readable headers (other names: underscores become spaces).
HEADERS = {
    "label": "method",
    "n_seeds": "seeds",
    "n": "seeds",
    "ci_low": "95% low",
    "ci_high": "95% high",
    "mean_a": "mean A",
    "mean_b": "mean B",
    "a": "A",
    "b": "B",
    "diff": "A - B (points)",
    "base_accuracy": "base (%)",
    "new_accuracy": "new (%)",
    "hm": "HM (%)",
    "test_images": "test images",
    "p_holm": "p (Holm)",
    "verdict_holm": "verdict (Holm)",
    "vs_paper": "vs paper",
}

_MISSING_TEXT = {"-", "nan", "NaN", "None", "<NA>"}

#: CSS of :func:`show_table` (numbers never wrap; headers wrap between words only).
TABLE_CSS = (
    "<style>table.fewclip-table{border-collapse:collapse;margin:0.3em 0 1em 0;max-width:100%}"
    "table.fewclip-table td{white-space:nowrap;text-align:right;padding:2px 8px}"
    "table.fewclip-table th{overflow-wrap:normal;word-break:keep-all;padding:2px 8px;"
    "text-align:left}"
    "p.fewclip-caption{margin:0.8em 0 0.2em 0;max-width:60em}</style>"
)


def display_name(value: Any) -> Any:
    """The reader's name of a method id (``"tip_adapter_f"`` -> ``"Tip-Adapter-F"``);
    anything else unchanged."""
    return DISPLAY_NAMES.get(value, value) if isinstance(value, str) else value


def header(name: Any) -> Any:
    """The readable header of a column name (:data:`HEADERS`, else underscores as spaces)."""
    if isinstance(name, tuple):
        return tuple(header(n) for n in name)
    if not isinstance(name, str):
        return name
    if name in HEADERS:
        return HEADERS[name]
    return DISPLAY_NAMES.get(name, name.replace("_", " "))


def _cell(value: Any, digits: int) -> str:
    """One cell as text: floats rounded (whole numbers without decimals), missing values
    as :data:`MISSING`."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return MISSING
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v, digits) for v in value) or MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(display_name(value))
    return MISSING if text.strip() in _MISSING_TEXT else text


def table_text(frame: pd.DataFrame, digits: int | dict[str, int] = 1) -> pd.DataFrame:
    """``frame`` as the strings a report shows: readable headers, display names, numbers
    rounded to ``digits`` (per column where a dict; whole-number columns as integers), one
    symbol for missing values; a named index (a pivot's rows) as leading columns, an
    unnamed one (0..n-1, or a concatenation's repeated zeros) never shown."""
    frame = frame.copy()
    trivial = all(n is None for n in frame.index.names)  # 0..n-1, or a concat's zeros
    if not trivial:
        frame = frame.reset_index()
    if {"a", "b"} <= set(frame.columns) and "accuracy" in frame.columns:
        frame = frame.rename(columns={"accuracy": "A - B (points)"})  # a paired difference
    text = pd.DataFrame(index=range(len(frame)))
    for i, column in enumerate(frame.columns):
        values = frame.iloc[:, i]
        d = digits.get(column, 1) if isinstance(digits, dict) else digits
        numeric = pd.api.types.is_float_dtype(values)
        whole = numeric and values.dropna().apply(float.is_integer).all() and values.notna().any()
        if whole and column not in (digits if isinstance(digits, dict) else {}):
            cells = [MISSING if v != v else str(int(v)) for v in values]
        else:
            cells = [_cell(v.item() if hasattr(v, "item") else v, d) for v in values]
        text[i] = cells
    text.columns = (
        pd.MultiIndex.from_tuples([header(c) for c in frame.columns])
        if isinstance(frame.columns, pd.MultiIndex)
        else [header(c) for c in frame.columns]
    )
    return text


#: CSS of a cell of words (names, causes, notes): left-aligned and wrapped, where numbers
#: stay right-aligned on one line.
TEXT_CELL = "text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:6em;max-width:36em"


def text_columns(text: pd.DataFrame) -> list[int]:
    """Positions of the columns of :func:`table_text` that hold words, not numbers (a cell
    such as "38.4 +- 1.2 [36.0, 40.8] n=3" counts as a number)."""
    out = []
    for i in range(text.shape[1]):
        cells = [str(v) for v in text.iloc[:, i] if str(v) not in ("", MISSING)]
        numbers = sum(bool(re.match(r"^[-+]?(\d|\.\d|inf|nan)", c)) for c in cells)
        if cells and numbers < len(cells) / 2:
            out.append(i)
    return out


class Table:
    """A report table: HTML in :data:`TABLE_CSS` style (no index column of zeros, nothing
    truncated, numbers never wrapped), plain text for terminals and tests."""

    def __init__(
        self,
        frame: pd.DataFrame,
        caption: str = "",
        digits: Any = 1,
        colours: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.frame, self.caption, self.colours = frame, caption, colours or {}
        self.text = table_text(frame, digits)

    def _repr_html_(self) -> str:
        styler = self.text.style.hide(axis="index").set_table_attributes('class="fewclip-table"')
        styler = styler.format(escape="html")
        # words left-aligned and wrapped (the table fits the page); numbers right, one line
        words = [f"{cell}.col{i}" for i in text_columns(self.text) for cell in ("td", "th")]
        if words:
            styler = styler.set_table_styles([{"selector": ", ".join(words), "props": TEXT_CELL}])
        for column, css in self.colours.items():  # cells coloured by value (e.g. verdicts)
            if header(column) in self.text.columns:
                styler = styler.map(lambda v, css=css: css.get(v, ""), subset=[header(column)])
        return TABLE_CSS + self._caption_html() + styler.to_html()

    def _caption_html(self) -> str:
        """The caption above the table, as wide as the page (not the table)."""
        import html

        if not self.caption:
            return ""
        return f'<p class="fewclip-caption"><b>{html.escape(self.caption)}</b></p>'

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None, "display.width", 10_000):
            shown = self.text.to_string(index=False)
        return (self.caption + "\n" if self.caption else "") + shown


def show_table(
    frame: pd.DataFrame,
    caption: str = "",
    digits: Any = 1,
    colours: dict[str, dict[str, str]] | None = None,
) -> None:
    """Display ``frame`` in the report style (:class:`Table`; ``colours``: column -> cell
    value -> CSS). Returns None, so a call that ends a cell shows the table once."""
    from IPython.display import display

    display(Table(frame, caption, digits, colours))


#: Output metadata key of :func:`show_conclusions` (fewclip.reports opens the page with them).
CONCLUSIONS_METADATA = "fewclip_conclusions"

#: Output metadata key of :func:`how_to_read` (one box per report).
HOW_TO_READ_METADATA = "fewclip_how_to_read"

#: Report pages sit beside the index and the ledger (``fewclip.reports``).
LINKS = "[All reports (index)](index.html) · [Claims ledger](claims.html)"


def how_to_read(*notes: str, intervals: bool = True) -> None:
    """Display the report's one "how to read this" box (:func:`how_to_read_text`)."""
    from IPython.display import Markdown, display

    display(
        Markdown(how_to_read_text(*notes, intervals=intervals)),
        metadata={HOW_TO_READ_METADATA: True},
    )


def how_to_read_text(*notes: str, intervals: bool = True) -> str:
    """The "how to read this" box: the table format, the interval's method (stated here
    once, not under every table), the missing-value symbol, ``notes``."""
    from .evidence import INTERVAL_METHOD

    lines = ["**How to read this report.**"]
    if intervals:
        lines.append(
            "A cell `38.4 +- 1.2 [36.0, 40.8] n=3` is the mean +- std over n seeds and its "
            "95% interval, in accuracy points (%); a difference A - B is paired (same seeds, "
            "few-shot samples and test images). " + INTERVAL_METHOD
        )
    lines.append(
        f"`{MISSING}`: no value (not run, failed, or not defined). Figures show the same 95% "
        "intervals as the tables, clipped to [0, 100]."
    )
    lines += list(notes)
    return "\n".join("> " + line + "\n>" for line in lines).rstrip(">\n")


def conclusions_text(sentences: Sequence[str]) -> tuple[str, list[str]]:
    """The conclusions box (Markdown) and the sentences it says (empty ones left out; a
    sentence saying so where none is left)."""
    said = [s for s in sentences if s]
    if not said:
        said = ["No conclusion: no comparison finished (see the failed runs below)."]
    text = "**Conclusions (from the numbers below).**\n\n" + "\n".join(f"- {s}" for s in said)
    return text, said


def show_conclusions(sentences: Sequence[str]) -> None:
    """Display the report's conclusions (sentences the notebook wrote from its numbers),
    tagged so that the published page opens with them."""
    from IPython.display import Markdown, display

    text, said = conclusions_text(sentences)
    display(Markdown(text), metadata={CONCLUSIONS_METADATA: said})


def interval_text(row: Any, digits: int = 1) -> str:
    """``"41.2 [38.0, 44.4]"`` from a summary or difference row (``mean`` or ``diff``,
    ``ci_low``, ``ci_high``)."""
    mean = row["diff"] if "diff" in row and row["diff"] == row["diff"] else row["mean"]
    return f"{mean:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def best_sentence(summary: pd.DataFrame, what: str, where: str = "") -> str:
    """One sentence from a :func:`fewclip.evidence.summarize` frame: the highest and lowest
    mean and whether their 95% intervals separate them."""
    rows = summary.dropna(subset=["mean"]) if len(summary) else summary
    if not len(rows):
        return ""
    rows = rows.sort_values("mean", ascending=False)
    top, low = rows.iloc[0], rows.iloc[-1]
    name = lambda r: display_name(r.get("label", r.get("method")))  # noqa: E731
    place = f" on {where}" if where else ""
    if len(rows) == 1:
        return f"{name(top)} reaches {what} {interval_text(top)}{place}."
    apart = top["ci_low"] > low["ci_high"]
    return (
        f"Highest {what}{place}: {name(top)} {interval_text(top)}; lowest: {name(low)} "
        f"{interval_text(low)} ("
        + ("the intervals do not overlap" if apart else "the intervals overlap")
        + f"; {len(rows)} methods)."
    )


def difference_sentence(row: Any, what: str = "accuracy", where: str = "") -> str:
    """One sentence from a :func:`fewclip.evidence.paired_difference` row: A - B with its
    interval and what the interval says."""
    a, b = display_name(row["a"]), display_name(row["b"])
    place = f" on {where}" if where else ""
    if row["ci_low"] > 0:
        verdict = f"{a} is ahead"
    elif row["ci_high"] < 0:
        verdict = f"{b} is ahead"
    else:
        verdict = "the interval includes 0: no difference resolved at this scale"
    return f"{a} - {b} ({what}{place}): {interval_text(row)} points; {verdict}."


def checkpoint_line(backbone: str, pretrained: str | None = "default") -> str:
    """``tiny-emoji-vit`` + weights file name + sha256 prefix (or random init)."""
    from .backbones import file_digest

    try:
        path = resolve_weights(backbone, pretrained)
    except (WeightsNotFoundError, UnknownBackboneError) as e:
        return f"`{backbone}` (weights `{pretrained}`: {type(e).__name__})"
    if path is None:
        return f"`{backbone}`, RANDOM INIT"
    return f"`{backbone}`, checkpoint `{Path(path).name}` (sha256 `{file_digest(path)[:12]}`)"


def tasks_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset (and protocol) of finished runs: classes and test images, read from the
    run records (base-to-new: base + new)."""
    from .evidence import parts_of

    rows = {}
    for r in done(frame).to_dict("records"):
        key = (r.get("dataset"), r.get("protocol"))
        if key in rows or not isinstance(r.get("metrics"), dict):
            continue
        m = r["metrics"]
        classes = (m.get("difficulty") or {}).get("num_classes")
        if classes is None and isinstance(m.get("per_class_accuracy"), list):
            classes = len(m["per_class_accuracy"])
        parts = parts_of(r, "accuracy")
        images = int(sum(b.size for b in parts.bits)) if parts is not None else None
        rows[key] = {
            "dataset": key[0],
            "protocol": key[1],
            "classes": classes,
            "test images": images if images is not None else m.get("test_images"),
        }
    return pd.DataFrame(
        list(rows.values()), columns=["dataset", "protocol", "classes", "test images"]
    )


def show_setup(
    frame: pd.DataFrame | None,
    *,
    backbone: str,
    pretrained: str | None = "default",
    shots: Any = None,
    seeds: Sequence[int] = (),
    notes: Sequence[str] = (),
) -> None:
    """Display the setup that ran: model and checkpoint, tasks with their class and
    test-image counts (from ``frame``'s run records), shots, seeds, ``notes`` (what else a
    reader needs: epochs, views, validation), and links to the index and the ledger."""
    from IPython.display import Markdown, display

    lines = [
        "**Setup.**",
        "",
        f"- Model: {checkpoint_line(backbone, pretrained)}"
        + {
            "random": ": numbers are NOT meaningful.",
            "toy": ", a toy-scale CLIP pretrained by fewclip (NOT OpenAI CLIP).",
        }.get(model_kind(backbone, pretrained), "."),
    ]
    if shots is not None:
        shown = ", ".join(map(str, shots)) if isinstance(shots, (list, tuple)) else shots
        lines.append(f"- Shots per class: {shown}.")
    if seeds:
        lines.append(f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)} per configuration).")
    lines += [f"- {n}" for n in notes]
    lines += ["", LINKS]
    text = "\n".join(lines)
    display(Markdown(text))
    if frame is not None and len(frame):
        tasks = tasks_table(frame)
        if len(tasks):
            show_table(tasks, "Tasks: classes and test images (from the run records)")
