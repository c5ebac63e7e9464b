"""The verdict rules of the claims ledger: the verdict of an effect interval against a
claim's direction, margin and equivalence bound, where it lies against the paper's own
effect, the p-value behind each verdict, Holm's adjustment per paper, and how the verdicts
of two checkpoints on the same claims compare. What each verdict means, and how the effect
and its interval are computed: :mod:`fewclip.claims`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .ledger import RATIO_DIRECTIONS

UNTESTED = "untested: A = B"
INCONCLUSIVE = "inconclusive at this scale"
NO_EFFECT = "no effect as large as delta"
GATED = "withheld: baseline below zero-shot"
HOLM_INCONCLUSIVE = "inconclusive after Holm"
#: Verdicts of a comparison that ran (the first three: of its interval alone).
TESTED = ("supported", "contradicted", INCONCLUSIVE, NO_EFFECT, GATED)
VERDICTS = (*TESTED, UNTESTED, "not run")
#: Family-wise level of the Holm adjustment (per paper).
ALPHA = 0.05


def threshold(direction: str, margin: float = 0.0) -> float:
    """The effect a claim must exceed: 0, or -margin for ``not_worse``; for a cost ratio,
    the margin it must stay below."""
    if direction in RATIO_DIRECTIONS:
        return margin
    return -margin if direction == "not_worse" else 0.0


def verdict(
    low: float, high: float, direction: str, margin: float = 0.0, delta: float = math.nan
) -> str:
    """The verdict of an effect interval [low, high] (the rules: :mod:`fewclip.claims`)."""
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


def with_holm(table: pd.DataFrame) -> pd.DataFrame:
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
    :func:`fewclip.claims.evaluate` tables of the same rows, e.g. two independently
    pretrained models) and how they compare: **agree** (the same verdict), **one decisive,
    one not** (supported or contradicted on one, any other tested verdict on the other),
    **neither decisive** (two different verdicts, neither supported nor contradicted),
    **opposite verdicts** (supported on one, contradicted on the other), or **not compared**
    (either side not run or untested). Columns ``id``, ``effect_first``, ``ci_first``,
    ``verdict_first``, the same ``_second``, and ``agreement``."""
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
