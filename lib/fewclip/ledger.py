"""The claims ledger file (``data/claims.csv``): its columns, reading and checking it, each
row's own seed count, and the paper-scale profile.

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

``seeds`` (an integer, at least 2, or empty): the row's own seed count
(:func:`claim_seeds`). What the rows mean and how they are judged: :mod:`fewclip.claims`.
Every check refuses a bad row in one sentence naming the claim and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

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
#: What a row's ``paper_scale`` may set.
SCALE_KEYS = ("backbone", "shots", "datasets", "protocol", "a_options", "b_options", "config")


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
    """The ledger as ``profile`` runs it, and the ``backbones`` map for
    :func:`fewclip.claims.configs`.

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
