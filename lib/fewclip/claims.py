"""The claims ledger: each paper's testable claims, the comparison that tests each, and a
verdict at this scale.

    from fewclip import claims
    ledger = claims.load()                                    # data/claims.csv
    configs = claims.configs(ledger, base, seeds=[1, 2, 3])   # the runs the claims need
    frame = nb.run_grid(configs, results)                     # run (or reuse) them
    table = claims.evaluate(ledger, frame)                    # effect, interval, verdict

The ledger file (its columns, checks and paper-scale profile) is :mod:`fewclip.ledger`;
the verdict rules, Holm's adjustment and the agreement of two checkpoints are
:mod:`fewclip.verdict_rules`. Their names are re-exported here (``claims.load``,
``claims.verdict``, ...), so ``from fewclip import claims`` is all a notebook needs.

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
from .ledger import (
    COLUMNS,
    COST_VALUES,
    CSV,
    DIRECTIONS,
    OPTIONAL_COLUMNS,
    PROFILES,
    RATIO_DIRECTIONS,
    SCALE_KEYS,
    at_scale,
    claim_seeds,
    load,
)
from .verdict_rules import (
    AGREE,
    ALPHA,
    DECISIVE,
    DISAGREE,
    GATED,
    HOLM_INCONCLUSIVE,
    INCONCLUSIVE,
    NEITHER,
    NO_EFFECT,
    NOT_COMPARED,
    PARTLY,
    TESTED,
    UNTESTED,
    VERDICTS,
    agreement,
    holm,
    p_value,
    summary_line,
    threshold,
    verdict,
    versus_paper,
    with_holm,
)

__all__ = [
    # the ledger file (fewclip.ledger)
    "COLUMNS", "COST_VALUES", "CSV", "DIRECTIONS", "OPTIONAL_COLUMNS", "PROFILES",
    "RATIO_DIRECTIONS", "SCALE_KEYS", "at_scale", "claim_seeds", "load",
    # the verdict rules (fewclip.verdict_rules)
    "AGREE", "ALPHA", "DECISIVE", "DISAGREE", "GATED", "HOLM_INCONCLUSIVE", "INCONCLUSIVE",
    "NEITHER", "NO_EFFECT", "NOT_COMPARED", "PARTLY", "TESTED", "UNTESTED", "VERDICTS",
    "agreement", "holm", "p_value", "summary_line", "threshold", "verdict", "versus_paper",
    "with_holm",
    # the comparisons (this module)
    "GATE_EXEMPT", "comparison", "configs", "evaluate", "gate_configs", "side_configs",
]  # fmt: skip

#: Side-B methods the zero-shot gate does not apply to, with the reason ``detail`` gives.
GATE_EXEMPT = {
    "linear_probe": "the linear probe never reads the text encoder and sits below "
    "zero-shot at low shots in the papers too, so the zero-shot gate does not apply",
}


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
    return with_holm(pd.DataFrame(rows))


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
