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
Optional: ``delta``, ``paper_effect``, ``contrast`` (below) and ``paper_scale`` (JSON: the
claim at the paper's scale, e.g. ``{"backbone": "RN50", "shots": 16, "datasets":
["imagenet", ...]}``, with ``a_options`` / ``b_options`` / ``config`` / ``protocol`` where
they differ, such as the official epochs): ``at_scale(ledger, "paper")`` runs the whole
ledger that way, on real weights and the CoOp benchmarks.

Directions and verdicts, from the paired difference A - B and its 95% interval
[low, high] (:func:`fewclip.evidence.paired_difference`: same seeds, same few-shot samples,
same test images; the interval combines a bootstrap over test images with the seed spread;
base-to-new claims resample their new classes by class, since a new-class claim generalises
over classes: :func:`fewclip.evidence.paired_cells` with ``by_class``):

- ``greater`` (A beats B): **supported** if low > 0, **contradicted** if high < 0, else
  **inconclusive at this scale**.
- ``not_worse`` (A matches or beats B): supported if low > -margin, contradicted if
  high < -margin, else inconclusive.
- ``interaction_greater`` (two datasets ``hard;easy``): the effect is
  (A - B on hard) - (A - B on easy); verdict as ``greater``. With a ``contrast`` (column
  ``contrast``, JSON: one RunConfig field and two values, the condition where A's gain
  should be larger first, e.g. ``{"label_noise": [0.1, 0.0]}``) the effect is
  (A - B at the first value) - (A - B at the second), each the mean over the claim's
  datasets: a robustness claim tested as a smaller drop. Both values are scored on the same
  test images, which the interval treats as independent: with the two differences
  positively correlated over images (the usual case) it is conservative.

- ``ratio_at_most`` (a cost claim: ``value`` is ``trainable_params`` or ``fit_seconds``):
  the effect is the ratio A / B, paired by dataset and seed (the geometric mean over the
  claim's datasets, then over seeds), with a Student-t interval over seeds on the log
  scale (no test images enter a cost); ``margin`` is the largest ratio the claim allows
  (e.g. 2: "at most twice B's time"). **Supported** if the interval's upper end is below
  the margin, **contradicted** if its lower end is above it, else inconclusive. Costs do
  not depend on B's accuracy, so the zero-shot gate does not apply. A trainable-parameter
  count is the same at every seed: its interval is the ratio itself.

- an equivalence bound ``delta`` (column ``delta``, points; the paper's own effect where
  known, else a stated smallest effect of interest): **no effect as large as delta** when
  the interval lies inside (-delta, delta) and no other verdict applies.

``seeds`` (an integer, at least 2): a row whose interval the spread over seeds dominates
(the few-shot sample, the label-noise draw, the fit time) runs on that many seeds where
the notebook runs fewer: its seeds are the notebook's, extended by the next integers
(:func:`claim_seeds`; :func:`configs` and :func:`evaluate` with ``row_seeds=False`` run
every row on the notebook's seeds alone).

``paper_effect`` (points, where the paper or ``data/paper_results.csv`` gives it) adds the
column ``vs_paper``: **smaller than the paper's effect** when the interval's upper end is
below it, **consistent with the paper's effect** when the interval holds it, **larger than
the paper's effect** when its lower end is above it.

Every tested row carries the interval's ``se`` and degrees of freedom ``df`` (Student-t,
Welch-Satterthwaite: :func:`fewclip.evidence.se_and_df`), the two-sided ``p`` of the test
against the direction's threshold (0, or -margin for ``not_worse``: p < 0.05 exactly when
the interval excludes it), ``p_holm`` (Holm's step-down adjustment over the tested claims of
the same paper) and ``verdict_holm``: a supported or contradicted verdict whose adjusted p is
0.05 or more reads **inconclusive after Holm**. ``coverage`` is the share of simulated
experiments in which the interval holds the true difference at that seed count
(:mod:`fewclip.coverage`).

**The zero-shot gate.** A trained baseline (side B, any method but ``zero_shot``) that
scores below zero-shot on a task it trained on (accuracy; base-class accuracy for
base-to-new) is a failed baseline, not evidence: the claim's verdict is **withheld:
baseline below zero-shot**, and ``detail`` names the task and the two numbers.
:func:`configs` adds the zero-shot runs the gate needs. Baselines that never read the
text encoder (:data:`GATE_EXEMPT`: the linear probe) are not gated: they are expected
below zero-shot at low shots (CLIP's own Figure 6, CLIP-Adapter's Figure 3), so falling
there is the baseline as the paper ran it, not a failed one; ``detail`` says so.

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

from . import coverage
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
#: Columns a ledger may leave out (empty: not stated).
OPTIONAL_COLUMNS = ("delta", "paper_effect", "contrast", "paper_scale", "seeds")
#: How the ledger can be run: as written (the offline tasks, the tiny models) or at the
#: papers' scale (each row's ``paper_scale``: CoOp datasets, RN50 / ViT-B/16, 16 shots).
PROFILES = ("embedded", "paper")
DIRECTIONS = ("greater", "not_worse", "interaction_greater", "ratio_at_most")
#: Directions whose effect is a cost ratio A / B, not a difference in points.
RATIO_DIRECTIONS = ("ratio_at_most",)
#: The values a cost claim may compare (record fields).
COST_VALUES = ("trainable_params", "fit_seconds")
UNTESTED = "untested: A = B"
INCONCLUSIVE = "inconclusive at this scale"
NO_EFFECT = "no effect as large as delta"
GATED = "withheld: baseline below zero-shot"
#: Side-B methods the zero-shot gate does not apply to, with the reason ``detail`` gives.
GATE_EXEMPT = {
    "linear_probe": "the linear probe never reads the text encoder and sits below "
    "zero-shot at low shots in the papers too, so the zero-shot gate does not apply",
}
HOLM_INCONCLUSIVE = "inconclusive after Holm"
#: Verdicts of a comparison that ran (the first three: of its interval alone).
TESTED = ("supported", "contradicted", INCONCLUSIVE, NO_EFFECT, GATED)
VERDICTS = (*TESTED, UNTESTED, "not run")
#: Family-wise level of the Holm adjustment (per paper).
ALPHA = 0.05


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
    for claim in frame.to_dict("records"):
        _check_ratio(claim, path or CSV)
    for column in ("delta", "paper_effect"):
        given = frame[column] if column in frame else [""] * len(frame)
        frame[column] = [_number(v, column, i) for i, v in zip(frame["id"], given, strict=True)]
    given = frame["seeds"] if "seeds" in frame else [""] * len(frame)
    frame["seeds"] = [_seed_count(v, i) for i, v in zip(frame["id"], given, strict=True)]
    given = frame["contrast"] if "contrast" in frame else [""] * len(frame)
    frame["contrast"] = [_contrast(v, i) for i, v in zip(frame["id"], given, strict=True)]
    given = frame["paper_scale"] if "paper_scale" in frame else [""] * len(frame)
    frame["paper_scale"] = [_scale(v, i) for i, v in zip(frame["id"], given, strict=True)]
    frame["datasets"] = [[d for d in s.split(";") if d] for s in frame["datasets"]]
    return frame


def _check_ratio(claim: Mapping[str, Any], path: str) -> None:
    """Refuse a cost claim that compares no cost or allows no ratio (one sentence)."""
    is_ratio = claim["direction"] in RATIO_DIRECTIONS
    if is_ratio and claim["value"] not in COST_VALUES:
        raise ValueError(
            f"{path}: claim {claim['id']} compares a ratio of {claim['value']!r}; a "
            f"{claim['direction']} claim compares one of {COST_VALUES}"
        )
    if is_ratio and not claim["margin"] > 0:
        raise ValueError(
            f"{path}: claim {claim['id']} needs a positive margin (the largest ratio A / B "
            f"it allows), got {claim['margin']}"
        )
    if not is_ratio and claim["value"] in COST_VALUES:
        raise ValueError(
            f"{path}: claim {claim['id']} compares {claim['value']!r} as a difference; "
            "compare a cost with direction ratio_at_most"
        )


def _seed_count(text: str, claim: str) -> int:
    """The ``seeds`` column: 0 (the notebook's seeds) or a count of at least 2."""
    if not text:
        return 0
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 2:
        raise ValueError(f"claim {claim}: seeds must be an integer of at least 2, got {text!r}")
    return count


def claim_seeds(claim: Mapping[str, Any], seeds: Sequence[int]) -> list[int]:
    """The seeds ``claim`` runs on: ``seeds``, extended by the integers after the largest
    until there are ``claim["seeds"]`` of them (``claim_seeds({"seeds": 5}, [1, 2]) == [1, 2,
    3, 4, 5]``)."""
    out = [int(s) for s in seeds]
    nxt = max(out, default=0) + 1
    while len(out) < int(claim.get("seeds") or 0):
        out.append(nxt)
        nxt += 1
    return out


def _number(text: str, column: str, claim: str) -> float:
    if text in ("", None):
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"claim {claim}: column {column} must be a number, got {text!r}") from None
    if column == "delta" and not value > 0:
        raise ValueError(f"claim {claim}: delta must be positive (points), got {value}")
    return value


def _contrast(text: str, claim: str) -> dict[str, list]:
    value = _json(text, "contrast", claim)
    if value and (
        len(value) != 1
        or not isinstance(next(iter(value.values())), list)
        or len(next(iter(value.values()))) != 2
    ):
        raise ValueError(
            f"claim {claim}: contrast must name one RunConfig field and two values, "
            'e.g. {"label_noise": [0.1, 0.0]}'
        )
    return value


#: What a row's ``paper_scale`` may set.
SCALE_KEYS = ("backbone", "shots", "datasets", "protocol", "a_options", "b_options", "config")


def _scale(text: str, claim: str) -> dict[str, Any]:
    value = _json(text, "paper_scale", claim)
    unknown = sorted(set(value) - set(SCALE_KEYS))
    if unknown:
        raise ValueError(
            f"claim {claim}: paper_scale has unknown key(s) {unknown}; use {list(SCALE_KEYS)}"
        )
    if value and not (value.get("backbone") and value.get("datasets")):
        raise ValueError(f"claim {claim}: paper_scale needs at least a backbone and datasets")
    return value


def at_scale(ledger: pd.DataFrame, profile: str = "embedded") -> tuple[pd.DataFrame, dict]:
    """The ledger as ``profile`` runs it, and the ``backbones`` map for :func:`configs`.

    ``"embedded"``: as written (the notebook maps ``rn`` / ``vit`` to its two backbones).
    ``"paper"``: each row's ``paper_scale`` replaces its datasets, shots and backbone (and,
    where given, protocol, options and config: e.g. the official epochs instead of an
    affordable schedule), so the same claims run on the CoOp benchmarks with real weights;
    rows without one are dropped (and listed in ``ledger.attrs["no_paper_scale"]``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown ledger profile {profile!r}; use one of {PROFILES}")
    if profile == "embedded":
        return ledger.copy(), {}
    rows, dropped = [], []
    for claim in ledger.to_dict("records"):
        scale = claim.get("paper_scale") or {}
        if not scale:
            dropped.append(claim["id"])
            continue
        rows.append(
            {
                **claim,
                "datasets": list(scale["datasets"]),
                "shots": int(scale.get("shots", claim["shots"])),
                "protocol": scale.get("protocol", claim["protocol"]),
                "a_options": dict(scale.get("a_options", claim["a_options"])),
                "b_options": dict(scale.get("b_options", claim["b_options"])),
                "config": {**claim["config"], **scale.get("config", {})},
                "encoder": scale["backbone"],
            }
        )
    out = pd.DataFrame(rows, columns=ledger.columns)
    out.attrs["no_paper_scale"] = dropped
    return out, {b: b for b in out["encoder"]}


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
    if claim.get("contrast"):
        return [
            cfg
            for level in _levels(claim)
            for cfg in side_configs(level, side, base, seeds, backbones)
        ]
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
    ledger: pd.DataFrame,
    base: RunConfig,
    seeds: Sequence[int],
    backbones=None,
    *,
    row_seeds: bool = True,
) -> list[RunConfig]:
    """Every run the ledger needs (each configuration once), each claim on its
    :func:`claim_seeds` (``row_seeds=False``: on ``seeds`` alone); claims whose configuration
    cannot be built (a field this version lacks) are skipped here and reported by
    :func:`evaluate` as not run."""
    seen: dict[str, RunConfig] = {}
    for claim in ledger.to_dict("records"):
        own = _seeds_of(claim, seeds, row_seeds)
        for side in ("a", "b", "zero_shot"):
            try:
                runs = (
                    gate_configs(claim, base, own, backbones)
                    if side == "zero_shot"
                    else side_configs(claim, side, base, own, backbones)
                )
            except (TypeError, ValueError):
                continue
            for cfg in runs:
                seen.setdefault(json.dumps(cfg.to_dict(), sort_keys=True, default=str), cfg)
    return list(seen.values())


def _seeds_of(claim: Mapping[str, Any], seeds: Sequence[int], extend: bool) -> list[int]:
    return claim_seeds(claim, seeds) if extend else [int(s) for s in seeds]


def gate_configs(
    claim: Mapping[str, Any], base: RunConfig, seeds: Sequence[int], backbones=None
) -> list[RunConfig]:
    """The zero-shot runs the gate compares a trained side B with (none when B is zero-shot
    or exempt from the gate)."""
    if _ungated(claim):
        return []
    gate = dict(claim, b_method="zero_shot", b_options={})
    return side_configs(gate, "b", base, seeds[:1], backbones)


def _ungated(claim: Mapping[str, Any]) -> bool:
    """Claims the zero-shot gate does not apply to: B is zero-shot or exempt, or a cost."""
    return (
        claim["b_method"] == "zero_shot"
        or claim["b_method"] in GATE_EXEMPT
        or claim["direction"] in RATIO_DIRECTIONS
    )


def threshold(direction: str, margin: float = 0.0) -> float:
    """The effect a claim must exceed: 0, or -margin for ``not_worse``; for a cost ratio,
    the margin it must stay below."""
    if direction in RATIO_DIRECTIONS:
        return margin
    return -margin if direction == "not_worse" else 0.0


def verdict(
    low: float, high: float, direction: str, margin: float = 0.0, delta: float = math.nan
) -> str:
    """The verdict of an effect interval [low, high] (see the module docstring)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not run"
    line = threshold(direction, margin)
    if direction in RATIO_DIRECTIONS:
        return "supported" if high < line else "contradicted" if low > line else INCONCLUSIVE
    if low > line:
        return "supported"
    if high < line:
        return "contradicted"
    if math.isfinite(delta) and -delta < low and high < delta:
        return NO_EFFECT
    return INCONCLUSIVE


def versus_paper(low: float, high: float, paper_effect: float) -> str:
    """Where the interval lies against the paper's own effect (points); '' if not given."""
    if not (math.isfinite(paper_effect) and math.isfinite(low) and math.isfinite(high)):
        return ""
    if high < paper_effect:
        return "smaller than the paper's effect"
    if low > paper_effect:
        return "larger than the paper's effect"
    return "consistent with the paper's effect"


def p_value(effect: float, se: float, df: float, line: float = 0.0) -> float:
    """Two-sided p of ``effect`` against ``line`` with a Student-t (``df``; inf: normal):
    below 1 - confidence exactly when the interval excludes ``line``."""
    from scipy import stats

    if not (math.isfinite(effect) and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 0.0 if effect != line else 1.0
    t = abs(effect - line) / se
    tail = stats.norm.sf(t) if not math.isfinite(df) else stats.t.sf(t, df)
    return float(min(1.0, 2.0 * tail))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count):
    p_(i) * (m - i + 1) for the i-th smallest of m, made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


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


def evaluate(
    ledger: pd.DataFrame,
    frame: pd.DataFrame,
    *,
    n_boot: int = ev.N_BOOT,
    seeds: Sequence[int] | None = None,
    row_seeds: bool = True,
) -> pd.DataFrame:
    """One row per claim: ``id``, ``paper``, ``claim``, ``comparison``, ``value``,
    ``effect`` (A - B, points), ``ci_low``, ``ci_high``, ``se``, ``df``, ``p``, ``p_holm``,
    ``n_seeds``, ``coverage``, ``datasets``, ``test_images`` (per arm, summed over the
    datasets), ``delta``, ``paper_effect``, ``vs_paper``, ``verdict``, ``verdict_holm`` and
    ``detail`` (per-dataset effects, or why the claim was not run).

    ``frame``: a sweep or store frame holding the claims' runs; a side's runs are those
    whose configured method, options, protocol, shots, dataset and ``config`` fields are
    exactly the claim's (a run with extra options is another configuration) and, with
    ``seeds``, whose seed is one of the claim's (:func:`claim_seeds`, as :func:`configs` ran
    them), so a claim reads the same seeds whatever else the frame holds."""
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
            "se": float("nan"),
            "df": float("nan"),
            "p": float("nan"),
            "p_holm": float("nan"),
            "n_seeds": 0,
            "coverage": float("nan"),
            "datasets": ", ".join(claim["datasets"]),
            "test_images": 0,
            "delta": claim.get("delta", float("nan")),
            "paper_effect": claim.get("paper_effect", float("nan")),
            "vs_paper": "",
            "verdict": "not run",
            "verdict_holm": "not run",
            "detail": "",
        }
        rows.append(row)
        levels = _levels(claim)
        wanted_seeds = None if seeds is None else set(_seeds_of(claim, seeds, row_seeds))
        mine = [
            r for r in done
            if wanted_seeds is None or int(r["config"].get("seed", 1)) in wanted_seeds
        ]  # fmt: skip
        matched = [
            {s: [r for r in mine if _matches(r, level, s)] for s in ("a", "b")} for level in levels
        ]
        sides = {s: [r for m in matched for r in m[s]] for s in ("a", "b")}
        if not sides["a"] or not sides["b"]:
            row["detail"] = _why_not_run(claim, sides, failed)
            continue
        if claim["direction"] in RATIO_DIRECTIONS:
            row.update(_ratio_row(claim, matched[0]))
            continue
        got = [_dataset_cells(level, m, n_boot) for level, m in zip(levels, matched, strict=True)]
        errors = [g for g in got if isinstance(g, str)]
        if errors:
            row["detail"] = errors[0]
            continue
        wanted = [c for cells in got for c in cells]
        cell = _effect_cell(claim, got)
        if isinstance(cell, str):
            row["detail"] = cell
            continue
        if cell is None:
            row["detail"] = "the datasets have no seed in common"
            continue
        stats = ev.cell_summary(cell, "a", "b")
        se, df = stats["se"], stats["df"]
        line = threshold(claim["direction"], claim["margin"])
        same = all(np.array_equal(c.values_a, c.values_b) and c.v_img < 1e-12 for c in wanted)
        low, high = stats["ci_low"], stats["ci_high"]
        decided = verdict(low, high, claim["direction"], claim["margin"], row["delta"])
        own = _own_level(claim)
        gated = _gate(claim, done, matched[own]["b"] if own is not None else [])
        row.update(
            effect=stats["diff"],
            ci_low=low,
            ci_high=high,
            se=se,
            df=df,
            p=math.nan if same else p_value(stats["diff"], se, df, line),
            n_seeds=stats["n_seeds"],
            coverage=coverage.stated(stats["n_seeds"]) or math.nan,
            test_images=_test_images(sides["a"], claim),
            vs_paper=versus_paper(low, high, row["paper_effect"]),
            verdict=UNTESTED if same else (GATED if gated else decided),
            detail=(
                "A and B give the same result on every test image of every seed; " if same else ""
            )
            + (gated + "; " if gated and not same else "")
            + (GATE_EXEMPT[claim["b_method"]] + "; " if claim["b_method"] in GATE_EXEMPT else "")
            + "; ".join(
                f"{c.cell['dataset']}: A {c.values_a.mean():.1f} vs B {c.values_b.mean():.1f}"
                for c in wanted
            )
            + f" ({stats['interval']})",
        )
    return _with_holm(pd.DataFrame(rows))


def _ratio_row(claim: Mapping[str, Any], matched: Mapping[str, list]) -> dict[str, Any]:
    """A cost claim's row: the ratio A / B of ``claim["value"]`` (geometric mean over the
    claim's datasets, then over seeds), its 95% interval (Student-t over seeds on log A / B),
    ``se`` and ``p`` on the log scale, the verdict against ``margin`` (the largest ratio
    allowed), or ``detail`` saying why there is none."""
    value, datasets = claim["value"], claim["datasets"]
    got = {
        s: {(r["config"]["dataset"], int(r["config"]["seed"])): ev.value_of(r, value)
            for r in matched[s]}
        for s in ("a", "b")
    }  # fmt: skip
    seeds = sorted(
        seed
        for seed in {k[1] for k in got["a"]}
        if all((d, seed) in got["a"] and (d, seed) in got["b"] for d in datasets)
    )
    pairs = [[(got["a"][d, s], got["b"][d, s]) for d in datasets] for s in seeds]
    if not seeds or not all(a > 0 and b > 0 for p in pairs for a, b in p):
        return {"detail": f"no positive {value} of both sides on every dataset at a common seed"}
    logs = np.array([np.mean([math.log(a / b) for a, b in p]) for p in pairs])
    n, mean = len(logs), float(logs.mean())
    # a parameter count is the same at every seed: its interval is the ratio itself
    std = 0.0 if value == "trainable_params" else float(logs.std(ddof=1)) if n > 1 else math.nan
    se = std / math.sqrt(n)
    df = float(n - 1) if se > 0 else math.inf
    low, high = ev.combine_interval(mean, std, n, 0.0)[:2] if math.isfinite(se) else (se, se)
    p = p_value(mean, se, df, math.log(claim["margin"]))
    low, high = math.exp(low), math.exp(high)
    means = "; ".join(
        f"{d}: A {np.mean([got['a'][d, s] for s in seeds]):.4g} vs "
        f"B {np.mean([got['b'][d, s] for s in seeds]):.4g}"
        for d in datasets
    )
    return {
        "value": f"{value} (ratio A / B)",
        "effect": math.exp(mean),
        "ci_low": low,
        "ci_high": high,
        "se": se,
        "df": df,
        "p": p,
        "n_seeds": n,
        "test_images": math.nan,
        "verdict": verdict(low, high, claim["direction"], claim["margin"]),
        "detail": f"{means} (ratio of the geometric means; se and p on log A / B, "
        f"Student-t over {n} seeds; allowed: at most {claim['margin']:g}x)",
    }


def _levels(claim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The claim itself, or with a ``contrast`` one claim per contrasted value (first: the
    condition where the effect should be larger), each with that value in its config."""
    if not claim.get("contrast"):
        return [dict(claim)]
    ((field, values),) = claim["contrast"].items()
    return [dict(claim, config={**claim["config"], field: v}, contrast={}) for v in values]


def _own_level(claim: Mapping[str, Any]) -> int | None:
    """Which of :func:`_levels` runs at the claim's own configuration (the contrasted field
    at the claim's ``config`` value or RunConfig's default), None if no level does."""
    if not claim.get("contrast"):
        return 0
    ((field, values),) = claim["contrast"].items()
    own = claim["config"].get(field, _CONFIG_DEFAULTS.get(field))
    return next((i for i, v in enumerate(values) if v == own), None)


def _dataset_cells(
    claim: Mapping[str, Any], matched: Mapping[str, list], n_boot: int
) -> list[ev.Cell] | str:
    """The paired cell of each of the claim's datasets, in its order (or why there is none).

    ``matched``: the finished records of side ``"a"`` and ``"b"`` at this claim's
    configuration. Base-to-new claims resample their new classes by class
    (:func:`fewclip.evidence.paired_cells`, ``by_class``)."""
    sides = {s: [dict(r, _side=s) for r in matched[s]] for s in ("a", "b")}
    if not sides["a"] or not sides["b"]:
        return f"no finished runs at {claim['config']}"
    both = pd.DataFrame(sides["a"] + sides["b"])
    try:
        cells = ev.paired_cells(
            both, {"_side": "a"}, {"_side": "b"}, on=["dataset"], value=claim["value"],
            n_boot=n_boot, by_class=claim["protocol"] == "base_to_new",
        )  # fmt: skip
    except ValueError as e:
        return str(e)
    by_dataset = {c.cell["dataset"]: c for c in cells}
    wanted = [by_dataset.get(d) for d in claim["datasets"]]
    if any(c is None for c in wanted):
        lacking = [d for d, c in zip(claim["datasets"], wanted, strict=True) if c is None]
        return f"no paired runs on {', '.join(lacking)}"
    return wanted


def _effect_cell(claim: Mapping[str, Any], levels: list[list[ev.Cell]]) -> ev.Cell | str | None:
    """The cell whose A - B is the claim's effect: one dataset, the mean over datasets, or
    an interaction: (A - B on hard) - (A - B on easy) over two datasets, or over the two
    values of a ``contrast`` (each the mean over the claim's datasets)."""
    if claim["direction"] != "interaction_greater":
        (wanted,) = levels
        return wanted[0] if len(wanted) == 1 else ev.pool_cells(wanted, {"dataset": "mean"})
    if claim.get("contrast"):
        if len(levels) != 2:
            return "a contrast needs exactly two values (the harder condition first)"
        pooled = [
            cells[0] if len(cells) == 1 else ev.pool_cells(cells, {"dataset": "mean"})
            for cells in levels
        ]
        if any(c is None for c in pooled):
            return None
        (field,) = claim["contrast"]
        label = {"dataset": ", ".join(claim["datasets"]), field: "first - second"}
        return ev.pool_cells(pooled, label, weights=[1.0, -1.0])
    (wanted,) = levels
    if len(wanted) != 2:
        return "an interaction claim needs exactly two datasets (hard;easy) or a contrast"
    return ev.pool_cells(wanted, {"dataset": "hard - easy"}, weights=[1.0, -1.0])


def _with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """``p_holm`` and ``verdict_holm``: Holm's adjustment over each paper's tested claims."""
    table = table.copy()
    for _, group in table.groupby("paper", sort=False):
        table.loc[group.index, "p_holm"] = holm(group["p"].tolist())
    table["verdict_holm"] = [
        HOLM_INCONCLUSIVE
        if v in ("supported", "contradicted") and not (math.isfinite(p) and p < ALPHA)
        else v
        for v, p in zip(table["verdict"], table["p_holm"], strict=True)
    ]
    return table


def _gate(claim: Mapping[str, Any], done: list, side_b: list) -> str:
    """Why the claim is withheld (side B, trained, below zero-shot on a task), or ''.

    ``side_b``: the finished records of side B at the claim's own configuration."""
    if _ungated(claim):
        return ""
    gate = dict(claim, b_method="zero_shot", b_options={})
    value = "base_accuracy" if claim["protocol"] == "base_to_new" else "accuracy"
    zero_shot = [r for r in done if _matches(r, gate, "b")]
    low = []
    for dataset in claim["datasets"]:
        zs = [r for r in zero_shot if r["config"]["dataset"] == dataset]
        trained = [r for r in side_b if r["config"]["dataset"] == dataset]
        zs_values = [ev.value_of(r, value) for r in zs]
        b_values = [ev.value_of(r, value) for r in trained]
        if not zs_values or not b_values:
            continue
        zero, baseline = float(np.nanmean(zs_values)), float(np.nanmean(b_values))
        if baseline < zero:
            low.append(f"{dataset}: B {baseline:.1f} below zero-shot {zero:.1f} ({value})")
    return ("baseline below zero-shot: " + ", ".join(low)) if low else ""


def _test_images(records: list, claim: Mapping[str, Any]) -> int:
    """Test images per arm, summed over the claim's datasets (one seed's worth)."""
    seen: dict[str, int] = {}
    for r in records:
        n = ev.test_images(r, claim["value"])
        if n is not None:
            seen.setdefault(r["config"]["dataset"], n)
    return int(sum(seen.values()))


def comparison(claim: Mapping[str, Any]) -> str:
    def side(s: str) -> str:
        opts = claim[f"{s}_options"]
        text = ", ".join(f"{k}={v}" for k, v in opts.items())
        return claim[f"{s}_method"] + (f" ({text})" if text else "")

    extra = ", ".join(f"{k}={v}" for k, v in claim["config"].items())
    if claim["direction"] in RATIO_DIRECTIONS:
        return (
            f"{claim['value']}: {side('a')} / {side('b')} <= {claim['margin']:g}; "
            f"{claim['protocol']}, K={claim['shots']}" + (f", {extra}" if extra else "")
        )
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


#: How two checkpoints' verdicts on a claim compare (:func:`agreement`).
AGREE, PARTLY, NEITHER, DISAGREE, NOT_COMPARED = (
    "agree",
    "one decisive, one not",
    "neither decisive",
    "opposite verdicts",
    "not compared",
)
DECISIVE = ("supported", "contradicted")


def agreement(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Per claim of ``second``: its verdict and effect on two checkpoints (two
    :func:`evaluate` tables of the same rows, e.g. two independently pretrained models) and
    how they compare: **agree** (the same verdict), **one decisive, one not** (supported or
    contradicted on one, any other tested verdict on the other), **neither decisive** (two
    different verdicts, neither supported nor contradicted), **opposite verdicts**
    (supported on one, contradicted on the other), or **not compared** (either side not run
    or untested). Columns ``id``, ``effect_first``, ``ci_first``, ``verdict_first``, the same
    ``_second``, and ``agreement``."""
    both = first.set_index("id").reindex(second["id"])
    rows = []
    for (cid, one), two in zip(both.iterrows(), second.to_dict("records"), strict=True):
        a, b = one.get("verdict"), two["verdict"]
        if a not in TESTED or b not in TESTED:
            how = NOT_COMPARED
        elif a == b:
            how = AGREE
        elif a in DECISIVE and b in DECISIVE:
            how = DISAGREE
        elif a in DECISIVE or b in DECISIVE:
            how = PARTLY
        else:
            how = NEITHER
        rows.append(
            {
                "id": cid,
                "effect_first": one.get("effect"),
                "ci_first": _interval_text(one.get("ci_low"), one.get("ci_high")),
                "verdict_first": a if isinstance(a, str) else "not run",
                "effect_second": two["effect"],
                "ci_second": _interval_text(two["ci_low"], two["ci_high"]),
                "verdict_second": b,
                "agreement": how,
            }
        )
    return pd.DataFrame(rows)


def _interval_text(low: Any, high: Any) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f"[{low:.2f}, {high:.2f}]"


def summary_line(table: pd.DataFrame) -> str:
    """``"16 claims: 3 supported, 1 contradicted, 10 inconclusive at this scale, 2 not run"``."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in VERDICTS if counts.get(v, 0)]
    return f"{len(table)} claims: " + ", ".join(parts)
