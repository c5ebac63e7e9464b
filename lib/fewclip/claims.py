"""The claims ledger: each paper's testable claims, the comparison that tests each, and a
verdict at this scale.

    from fewclip import claims
    ledger = claims.load()                                    # data/claims.csv
    configs = claims.configs(ledger, base, seeds=[1, 2, 3])   # the runs the claims need
    frame = nb.run_grid(configs, results)                     # run (or reuse) them
    table = claims.evaluate(ledger, frame)                    # effect, interval, verdict

One row of ``data/claims.csv`` per claim: ``id``, ``paper``, ``claim`` (one sentence),
``where`` (where the paper states it), the comparison (``a_method`` + ``a_options`` (JSON)
against ``b_method`` + ``b_options``; ``config``: JSON RunConfig fields both sides get, e.g.
``{"label_noise": 0.25}``), ``protocol``, ``shots``, ``datasets`` (``;``-separated),
``value`` (``accuracy``, ``new_accuracy``, ``hm``, ...), ``direction``, ``margin``,
``encoder`` (``rn`` or ``vit``: which of the notebook's two backbones) and ``note``.

Directions and verdicts, from the paired difference A - B and its 95% interval
[low, high] (:func:`fewclip.evidence.paired_difference`: same seeds, same few-shot samples,
same test images; the interval combines a bootstrap over test images with the seed spread):

- ``greater`` (A beats B): **supported** if low > 0, **contradicted** if high < 0, else
  **inconclusive at this scale**.
- ``not_worse`` (A matches or beats B): supported if low > -margin, contradicted if
  high < -margin, else inconclusive.
- ``interaction_greater`` (two datasets ``hard;easy``): the effect is
  (A - B on hard) - (A - B on easy); verdict as ``greater``.

A claim whose two sides give the same result on every test image of every seed gets
**untested: A = B**, whatever its direction: the options compared change nothing at this
scale (e.g. APEX's fixed ensemble weight when no evaluation class is far enough from the
training classes for the weight to apply), so the comparison says nothing about the claim.

Several datasets for a ``greater`` / ``not_worse`` claim: the effect is the mean of the
per-dataset differences (:func:`fewclip.evidence.pool_cells`). A claim whose runs are
missing or failed gets the verdict **not run** and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import evidence as ev
from .config import RunConfig
from .notebook import resolve

CSV = "data/claims.csv"
COLUMNS = (
    "id",
    "paper",
    "claim",
    "where",
    "a_method",
    "a_options",
    "b_method",
    "b_options",
    "config",
    "protocol",
    "shots",
    "datasets",
    "value",
    "direction",
    "margin",
    "encoder",
    "note",
)
DIRECTIONS = ("greater", "not_worse", "interaction_greater")
UNTESTED = "untested: A = B"
VERDICTS = ("supported", "contradicted", "inconclusive at this scale", UNTESTED, "not run")


def load(path: str | None = None) -> pd.DataFrame:
    """The ledger, checked: every column present, JSON fields parsed, known directions."""
    frame = pd.read_csv(resolve(path or CSV), dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path or CSV}: missing column(s) {sorted(missing)}")
    if frame["id"].duplicated().any():
        raise ValueError(
            f"{path or CSV}: claim ids repeat: {sorted(frame['id'][frame['id'].duplicated()])}"
        )
    for column in ("a_options", "b_options", "config"):
        frame[column] = [
            _json(v, column, i) for i, v in zip(frame["id"], frame[column], strict=True)
        ]
    bad = sorted(set(frame["direction"]) - set(DIRECTIONS))
    if bad:
        raise ValueError(f"{path or CSV}: unknown direction(s) {bad}; use one of {DIRECTIONS}")
    frame["shots"] = frame["shots"].astype(int)
    frame["margin"] = [float(m or 0) for m in frame["margin"]]
    frame["datasets"] = [[d for d in s.split(";") if d] for s in frame["datasets"]]
    return frame


def _json(text: str, column: str, claim: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"claim {claim}: column {column} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"claim {claim}: column {column} must be a JSON object")
    return value


def side_configs(
    claim: Mapping[str, Any], side: str, base: RunConfig, seeds: Sequence[int], backbones=None
) -> list[RunConfig]:
    """The runs of one side (``"a"`` / ``"b"``) of a claim: every dataset x seed.

    ``backbones`` maps the ledger's ``encoder`` (``rn`` / ``vit``) to a backbone name; the
    default keeps ``base.backbone``. Raises TypeError for a config field RunConfig lacks."""
    backbone = (backbones or {}).get(claim["encoder"], base.backbone)
    out = []
    for dataset in claim["datasets"]:
        for seed in seeds:
            cfg = base.replace(
                method=claim[f"{side}_method"],
                options=dict(claim[f"{side}_options"]),
                protocol=claim["protocol"],
                shots=int(claim["shots"]),
                dataset=dataset,
                seed=int(seed),
                backbone=backbone,
                **claim["config"],
            )
            out.append(cfg)
    return out


def configs(
    ledger: pd.DataFrame, base: RunConfig, seeds: Sequence[int], backbones=None
) -> list[RunConfig]:
    """Every run the ledger needs (each configuration once); claims whose configuration
    cannot be built (a field this version lacks) are skipped here and reported by
    :func:`evaluate` as not run."""
    seen: dict[str, RunConfig] = {}
    for claim in ledger.to_dict("records"):
        for side in ("a", "b"):
            try:
                runs = side_configs(claim, side, base, seeds, backbones)
            except (TypeError, ValueError):
                continue
            for cfg in runs:
                seen.setdefault(json.dumps(cfg.to_dict(), sort_keys=True, default=str), cfg)
    return list(seen.values())


def verdict(low: float, high: float, direction: str, margin: float = 0.0) -> str:
    """The verdict of an effect interval [low, high] (see the module docstring)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not run"
    threshold = -margin if direction == "not_worse" else 0.0
    if low > threshold:
        return "supported"
    if high < threshold:
        return "contradicted"
    return "inconclusive at this scale"


def _matches(record: Mapping[str, Any], claim: Mapping[str, Any], side: str) -> bool:
    cfg = record.get("config") or {}
    if cfg.get("method") != claim[f"{side}_method"]:
        return False
    if cfg.get("protocol") != claim["protocol"] or int(cfg.get("shots", -1)) != claim["shots"]:
        return False
    if cfg.get("dataset") not in claim["datasets"]:
        return False
    if (cfg.get("options") or {}) != claim[f"{side}_options"]:
        return False
    # the other result fields at the claim's values or RunConfig's defaults, so a claim
    # without label noise never picks up another claim's noisy runs
    expected = {**_CONFIG_DEFAULTS, **claim["config"]}
    return all(cfg.get(k, _CONFIG_DEFAULTS.get(k)) == v for k, v in expected.items())


#: RunConfig fields a claim's ``config`` may set, with their defaults.
_CONFIG_DEFAULTS = {
    k: v
    for k, v in RunConfig().to_dict().items()
    if k
    not in (
        "method", "options", "protocol", "shots", "dataset", "seed", "backbone", "pretrained",
        "variant", "augment_views", "allow_fewer", "data_root", "cache_dir", "device",
        "num_workers", "progress",
    )
}  # fmt: skip


def evaluate(ledger: pd.DataFrame, frame: pd.DataFrame, *, n_boot: int = ev.N_BOOT) -> pd.DataFrame:
    """One row per claim: ``id``, ``paper``, ``claim``, ``comparison``, ``value``,
    ``effect`` (A - B, points), ``ci_low``, ``ci_high``, ``n_seeds``, ``datasets``,
    ``verdict`` and ``detail`` (per-dataset effects, or why the claim was not run).

    ``frame``: a sweep or store frame holding the claims' runs; a side's runs are those
    whose configured method, options, protocol, shots, dataset and ``config`` fields are
    exactly the claim's (a run with extra options is another configuration)."""
    records = frame.to_dict("records") if len(frame) else []
    failed = [r for r in records if r.get("status") == "failed"]
    done = [r for r in records if r.get("status", "done") == "done"]
    rows = []
    for claim in ledger.to_dict("records"):
        row = {
            "id": claim["id"],
            "paper": claim["paper"],
            "claim": claim["claim"],
            "comparison": comparison(claim),
            "value": claim["value"],
            "effect": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "n_seeds": 0,
            "datasets": ", ".join(claim["datasets"]),
            "verdict": "not run",
            "detail": "",
        }
        rows.append(row)
        sides = {s: [dict(r, _side=s) for r in done if _matches(r, claim, s)] for s in ("a", "b")}
        if not sides["a"] or not sides["b"]:
            row["detail"] = _why_not_run(claim, sides, failed)
            continue
        both = pd.DataFrame(sides["a"] + sides["b"])
        try:
            cells = ev.paired_cells(
                both, {"_side": "a"}, {"_side": "b"}, on=["dataset"], value=claim["value"],
                n_boot=n_boot,
            )  # fmt: skip
        except ValueError as e:
            row["detail"] = str(e)
            continue
        by_dataset = {c.cell["dataset"]: c for c in cells}
        wanted = [by_dataset.get(d) for d in claim["datasets"]]
        if any(c is None for c in wanted):
            lacking = [d for d, c in zip(claim["datasets"], wanted, strict=True) if c is None]
            row["detail"] = f"no paired runs on {', '.join(lacking)}"
            continue
        if claim["direction"] == "interaction_greater":
            if len(wanted) != 2:
                row["detail"] = "an interaction claim needs exactly two datasets (hard;easy)"
                continue
            cell = ev.pool_cells(wanted, {"dataset": "hard - easy"}, weights=[1.0, -1.0])
        else:
            cell = wanted[0] if len(wanted) == 1 else ev.pool_cells(wanted, {"dataset": "mean"})
        if cell is None:
            row["detail"] = "the datasets have no seed in common"
            continue
        stats = ev.cell_summary(cell, "a", "b")
        same = all(np.array_equal(c.values_a, c.values_b) and c.v_img < 1e-12 for c in wanted)
        row.update(
            effect=stats["diff"],
            ci_low=stats["ci_low"],
            ci_high=stats["ci_high"],
            n_seeds=stats["n_seeds"],
            verdict=UNTESTED
            if same
            else verdict(stats["ci_low"], stats["ci_high"], claim["direction"], claim["margin"]),
            detail=(
                "A and B give the same result on every test image of every seed; " if same else ""
            )
            + "; ".join(
                f"{c.cell['dataset']}: A {c.values_a.mean():.1f} vs B {c.values_b.mean():.1f}"
                for c in wanted
            )
            + f" ({stats['interval']})",
        )
    return pd.DataFrame(rows)


def comparison(claim: Mapping[str, Any]) -> str:
    def side(s: str) -> str:
        opts = claim[f"{s}_options"]
        text = ", ".join(f"{k}={v}" for k, v in opts.items())
        return claim[f"{s}_method"] + (f" ({text})" if text else "")

    extra = ", ".join(f"{k}={v}" for k, v in claim["config"].items())
    sign = {"greater": ">", "not_worse": ">=", "interaction_greater": "> (interaction)"}
    return (
        f"{side('a')} {sign[claim['direction']]} {side('b')}; {claim['protocol']}, "
        f"K={claim['shots']}" + (f", {extra}" if extra else "")
    )


def _why_not_run(claim, sides, failed) -> str:
    missing = [s.upper() for s in ("a", "b") if not sides[s]]
    errors = {
        r.get("error")
        for r in failed
        if (r.get("config") or {}).get("method") in (claim["a_method"], claim["b_method"])
        and (r.get("config") or {}).get("dataset") in claim["datasets"]
    }
    try:
        RunConfig(**claim["config"])
    except TypeError as e:
        return f"this version cannot build the runs: {e}"
    why = f"no finished runs for side {' and '.join(missing)}"
    return why + (f"; failed: {'; '.join(sorted(str(e) for e in errors))}" if errors else "")


def summary_line(table: pd.DataFrame) -> str:
    """``"16 claims: 3 supported, 1 contradicted, 10 inconclusive at this scale, 2 not run"``."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in VERDICTS if counts.get(v, 0)]
    return f"{len(table)} claims: " + ", ".join(parts)
