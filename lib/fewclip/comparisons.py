"""One configuration per comparison: the settings a claim is tested with live in ONE place,
the ledger (``data/claims.csv``: methods, options such as epochs, protocol, shots, tasks),
and every report that shows a claim's comparison reads them from here.

The claims report runs every row of the ledger; a paper report runs its paper's rows with
the same configurations (:func:`ledger_runs`), so the same runs come back from the shared
results store and the same number appears in both reports (:func:`verdict_table`). Any
other setting a paper report shows (e.g. a method's official schedule) is an *extra
setting*, labelled as such (:func:`extra_setting_note`).

    from fewclip import comparisons
    ledger, configs = comparisons.ledger_runs("apex", base, seeds, backbones)
    frame = nb.run_grid(configs, results)
    verdicts = comparisons.verdicts(ledger, frame)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import claims
from .config import RunConfig

#: The run settings of every ledger comparison beyond the ledger's own columns (the claims
#: report's defaults; a paper report that runs ledger claims uses exactly these).
LEDGER_BASE = {"augment_views": 10, "allow_fewer": True}

#: The columns of a verdict every report shows (the claims report and the paper reports).
VERDICT_COLUMNS = (
    "id",
    "claim",
    "comparison",
    "datasets",
    "n_seeds",
    "effect",
    "ci_low",
    "ci_high",
    "verdict",
    "verdict_holm",
)


def ledger(
    paper: str | Sequence[str] | None = None,
    claims_file: str | None = None,
    profile: str = "embedded",
) -> tuple[pd.DataFrame, dict]:
    """The ledger rows of ``paper`` (None: every paper) as ``profile`` runs them, and the
    backbones map of :func:`fewclip.claims.at_scale` (empty for the embedded profile)."""
    table, backbones = claims.at_scale(claims.load(claims_file), profile)
    if paper is not None:
        papers = [paper] if isinstance(paper, str) else list(paper)
        unknown = sorted(set(papers) - set(table["paper"]))
        if unknown:
            known = sorted(set(table["paper"]))
            raise ValueError(f"no claim of paper(s) {unknown} in the ledger; papers: {known}")
        table = table[table["paper"].isin(papers)]
    return table.reset_index(drop=True), backbones


def ledger_runs(
    paper: str | Sequence[str] | None,
    base: RunConfig,
    seeds: Sequence[int],
    backbones: Mapping[str, str] | None = None,
    *,
    claims_file: str | None = None,
    profile: str = "embedded",
    dataset_map: Mapping[str, str] | None = None,
    row_seeds: bool = True,
) -> tuple[pd.DataFrame, list[RunConfig]]:
    """The ledger rows of ``paper`` and every run they need: the very configurations the
    claims report runs (:func:`fewclip.claims.configs`, each row on its own seeds unless
    ``row_seeds`` is False), so both reports read the same runs.
    ``backbones``: ``{"rn": ..., "vit": ...}`` (the paper profile's own when it has one);
    ``dataset_map`` replaces ledger datasets (quick checks, as the claims report's)."""
    rows, scale = ledger(paper, claims_file, profile)
    if dataset_map:
        rows["datasets"] = [[dataset_map.get(d, d) for d in ds] for ds in rows["datasets"]]
    return rows, claims.configs(rows, base, seeds, scale or backbones, row_seeds=row_seeds)


def verdicts(
    rows: pd.DataFrame,
    frame: pd.DataFrame,
    seeds: Sequence[int] | None = None,
    row_seeds: bool = True,
) -> pd.DataFrame:
    """:func:`fewclip.claims.evaluate` of ``rows`` on ``frame``, each claim on its own seeds
    (``seeds`` extended as :func:`ledger_runs` ran them; Holm's adjustment is within a
    paper), so a paper's rows give the same verdicts here as in the claims report."""
    return claims.evaluate(rows, frame, seeds=seeds, row_seeds=row_seeds)


def summary(table: pd.DataFrame) -> str:
    """``"3 claims: 1 supported, 2 inconclusive at this scale"`` (claims.summary_line)."""
    return claims.summary_line(table)


def verdict_table(table: pd.DataFrame) -> pd.DataFrame:
    """The shown columns of a verdicts table (:data:`VERDICT_COLUMNS`, those present)."""
    return table[[c for c in VERDICT_COLUMNS if c in table.columns]]


def settings(rows: pd.DataFrame) -> pd.DataFrame:
    """Per claim: the settings of its comparison (protocol, shots, tasks, each side's method
    and options), the configuration a report states beside the claim's number."""
    out = []
    for claim in rows.to_dict("records"):
        out.append(
            {
                "id": claim["id"],
                "protocol": claim["protocol"],
                "shots": claim["shots"],
                "datasets": ", ".join(claim["datasets"]),
                "A": f"{claim['a_method']} {_options(claim.get('a_options'))}".strip(),
                "B": f"{claim['b_method']} {_options(claim.get('b_options'))}".strip(),
            }
        )
    return pd.DataFrame(out, columns=["id", "protocol", "shots", "datasets", "A", "B"])


def _options(options: Any) -> str:
    if not options:
        return ""
    return "(" + ", ".join(f"{k}={v}" for k, v in dict(options).items()) + ")"


def extra_setting_note(what: str) -> str:
    """The label of a setting a paper report shows beyond the ledger's configuration."""
    return (
        f"**Extra setting, not the ledger's configuration:** {what} The ledger's own "
        "comparisons (and their numbers, the same as in the claims report) are in the "
        'section "The ledger\'s claims for this paper".'
    )
