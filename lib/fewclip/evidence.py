"""Uncertainty of results: mean +- std over seeds, 95% intervals, paired differences, and
the grouping keys that keep different configurations apart.

    from fewclip import evidence as ev
    table = ev.summarize(frame, by=("label", "shots"))         # one row per configuration
    diff = ev.paired_difference(frame, a="dual_adapter", b="tip_adapter_f",
                                on=("dataset", "shots"))        # A - B, paired by seed
    ev.group_columns(frame)          # the columns that identify a configuration
    ev.INTERVAL_METHOD               # the sentence to print under a table

The tables, one configuration per row or cell, never two averaged:

- with intervals: :func:`summarize` (numbers), :func:`compact` (its numbers as
  ``mean +- std [low, high] n=S`` text), :func:`pivot` (that text as a wide table; two
  configurations in one cell raise);
- plain means over seeds, no interval: :func:`seed_means` (mean, std and count per
  configuration), :func:`pivot_means` (a wide table of the means; the columns that tell
  configurations apart join the index).

``frame`` is a sweep frame (:func:`fewclip.notebook.run_grid`) or a results-store frame
(:meth:`fewclip.results.ResultStore.to_frame`); only finished runs count.

**Grouping.** A configuration is everything that changes a result except the seed: the
method and its resolved options (minus ``progress``), the variant, dataset, protocol,
backbone and the identity of its weights (file digest), shots, templates, descriptions,
selection, val split, label noise, augmentation views, reader options, evaluation datasets,
the data fingerprint, and any RunConfig field added later. :func:`configurations` gives
one column per such field and a ``config_id`` (their hash); :func:`summarize` groups on
``by`` *plus* every key column that varies, so two runs that differ only in an option are
never averaged (the option shows up as a column). Identical configurations stored twice
(same ``run_key``, or same ``config_id`` and seed) count once: the latest is kept and the
``duplicates`` column says how many were dropped.

**Interval (the method, stated wherever one is shown: :data:`INTERVAL_METHOD`).** For one
configuration with per-seed accuracies ``a_1..a_S`` on the same ``n`` test images:

    mean = (1/S) sum_s a_s,      s = std over seeds (ddof 1)
    V_img = variance of the seed-mean over B bootstrap resamples of the test images
            (one resample of image indices shared by all seeds: the test set is shared)
    se = sqrt(V_img + s^2 / S)
    95% interval = mean +- q * se,  q = Student-t quantile at 0.975 with the
            Welch-Satterthwaite degrees of freedom  se^4 / ((s^2/S)^2 / (S - 1))
            (t_{S-1} when the seed spread dominates, the normal 1.96 when the test images do)

``V_img`` covers "another test set of the same size"; ``s^2 / S`` covers "other few-shot
samples and initialisations". With one seed the seed term is unknown and the interval
covers the test images only (``interval`` says so). Records without per-image correctness
(made before it was stored) use the binomial variance ``p (1 - p) / n`` per seed, averaged
as if the seeds were perfectly correlated (conservative), and say so.

**Paired differences.** A - B per seed, with A and B on the same seeds (so the same
few-shot samples: the sample is a function of dataset, shots and seed) and the same test
images (checked through the test-label digest); ``V_img`` resamples the same images for
both methods, so what the two get right together cancels. The same formula gives the
interval of the mean difference. A seed-independent side (zero-shot, one seed) is used for
every seed of the other side. ``pool=True`` adds a row averaging the difference over the
``on`` cells (e.g. over datasets): images of different cells are resampled independently,
so pool over cells with distinct test images (datasets), not over shots of one dataset.

**New classes by class.** A base-to-new claim about new classes generalises over classes
(another draw of new classes), not only over images of the same classes. With
``by_class=True`` (:func:`paired_cells`, :func:`paired_difference`; the claims ledger uses
it for base-to-new claims) the new-class part of ``new_accuracy`` and ``hm`` is resampled
by class, a cluster bootstrap: the new classes are drawn with replacement, each with all
its test images (and the same draw for both methods and every seed); base classes stay
resampled by image. When a method's gain differs between classes this interval is wider
than the image bootstrap, which takes the images of one class as independent. It needs the
per-image labels of the record (``metrics["new"]["labels"]``,
:func:`fewclip.metrics.encode_labels`); records made before they were stored fall back to
the image bootstrap and the ``interval`` text says so.

Per-image correctness comes from the record (``metrics["correct"]``, written by
:func:`fewclip.metrics.encode_correct`; ``metrics["base"]`` / ``["new"]`` for base-to-new,
``metrics["transfer_detail"][target]`` for transfer). Values: ``"accuracy"``,
``"base_accuracy"``, ``"new_accuracy"``, ``"hm"`` (bootstrapped through the harmonic
mean), ``"transfer:<dataset>"`` and ``"transfer_mean"`` (the mean over the target datasets,
each target's images resampled).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .config import NON_RESULT_FIELDS
from .metrics import decode_correct, decode_labels

#: How the intervals are made, for captions (one sentence).
INTERVAL_METHOD = (
    "Mean +- std over seeds; [95% interval] = mean +- q * sqrt(V_img + s^2/S), where V_img "
    "is the variance of the seed-mean under a bootstrap over the test images (1000 "
    "resamples, shared by all seeds and, for differences, by both methods), s the std over "
    "the S seeds, q the Student-t quantile with Welch-Satterthwaite degrees of freedom."
)

#: Method options that say how a run is shown, not what it computes.
NON_RESULT_OPTIONS = ("progress",)

#: Methods whose result does not depend on the seed (no sample, no training).
SEED_INDEPENDENT = ("zero_shot",)

#: The first key columns, in display order; the others follow alphabetically.
KEY_ORDER = (
    "label",
    "method",
    "variant",
    "dataset",
    "protocol",
    "backbone",
    "pretrained",
    "weights",
    "shots",
    "selection",
    "val",
    "label_noise",
    "templates",
)

N_BOOT = 1000
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- keys


def _text(value: Any) -> Any:
    """A key value: scalars as they are, lists and dicts as sorted JSON, None as ''."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def config_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The result-determining fields of one record or frame row, without the seed.

    From ``record["config"]`` (every RunConfig field except the seed and those that only
    say where or how fast), the resolved method options ``record["options"]`` as
    ``options.<name>`` (the configured ones where the record has no resolved options),
    the weights identity (``weights``) and the data fingerprint (``data``).
    """
    cfg = record.get("config")
    cfg = dict(cfg) if isinstance(cfg, Mapping) else {}
    if not cfg:  # a frame without configs: its flat columns
        for k in ("method", "variant", "dataset", "protocol", "backbone", "pretrained"):
            cfg[k] = record.get(k)
        for k in ("shots", "selection"):
            cfg[k] = record.get(k)
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in NON_RESULT_FIELDS or k in ("seed", "options"):
            continue
        out[k] = _text(v)
    resolved = record.get("options")
    options = resolved if isinstance(resolved, Mapping) and resolved else cfg.get("options")
    for k, v in sorted((options or {}).items()):
        if k not in NON_RESULT_OPTIONS:
            out[f"options.{k}"] = _text(v)
    info = record.get("backbone_info")
    if isinstance(info, Mapping) and info.get("identity"):
        out["weights"] = str(info["identity"])
    metrics = record.get("metrics")
    if isinstance(metrics, Mapping) and metrics.get("data_fingerprint"):
        out["data"] = str(metrics["data_fingerprint"])
    return out


def config_id(fields: Mapping[str, Any]) -> str:
    """A short hash of :func:`config_fields`: equal exactly when every field is equal."""
    payload = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _finished(frame: pd.DataFrame) -> pd.DataFrame:
    if "status" in frame:
        frame = frame[frame["status"] == "done"]
    return frame


def configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of ``frame``, one per (configuration, seed), with one column per
    result-determining field (:func:`config_fields`), ``label`` (variant, else method),
    ``config_id`` and ``duplicates`` (copies of the same run dropped; the latest is kept).
    The key column names are in ``.attrs["group_columns"]``."""
    rows = _finished(frame).reset_index(drop=True)
    if not len(rows):
        out = rows.copy()
        out.attrs["group_columns"] = []
        return out
    fields = [config_fields(r) for r in rows.to_dict("records")]
    keys = sorted({k for f in fields for k in f}, key=lambda k: (k not in KEY_ORDER, _rank(k), k))
    keyed = pd.DataFrame([{k: f.get(k, "") for k in keys} for f in fields], index=rows.index)
    out = rows.drop(columns=[c for c in keys if c in rows]).join(keyed)
    variant = out["variant"] if "variant" in out else pd.Series("", index=out.index)
    out["label"] = [
        v if isinstance(v, str) and v else m for v, m in zip(variant, out["method"], strict=True)
    ]
    out["config_id"] = [config_id(f) for f in fields]
    if "seed" not in out:
        out["seed"] = 1
    order = out["created_at"] if "created_at" in out else pd.Series(range(len(out)))
    out = out.assign(_order=order.fillna("").astype(str).values).sort_values(
        "_order", kind="stable"
    )
    subset = ["run_key"] if "run_key" in out else []
    before = out.groupby(["config_id", "seed"])["config_id"].transform("size")
    if subset:
        out = out.drop_duplicates(subset, keep="last")
    out = out.drop_duplicates(["config_id", "seed"], keep="last")
    out["duplicates"] = before.reindex(out.index) - 1
    out = out.drop(columns="_order").sort_index()
    out.attrs["group_columns"] = ["label", *keys]
    return out


def _rank(key: str) -> int:
    return KEY_ORDER.index(key) if key in KEY_ORDER else len(KEY_ORDER)


def group_columns(frame: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """``by`` plus every result-determining column that varies within a group of ``by``:
    grouping on these never averages two configurations. ``by=()``: every key column
    that varies in the frame. ``frame``: raw (it is keyed here) or from
    :func:`configurations`."""
    keyed = frame if "config_id" in frame else configurations(frame)
    keys = keyed.attrs.get("group_columns") or [
        c for c in keyed.columns if c in KEY_ORDER or c.startswith("options.")
    ]
    by = list(by)
    if not len(keyed):
        return by
    if by:
        rest = [k for k in keys if k not in by]
        varying = keyed.groupby(by, dropna=False, sort=False)[rest].nunique(dropna=False).max()
    else:
        varying = keyed[keys].nunique(dropna=False)
    return by + [k for k in keys if k not in by and varying.get(k, 1) > 1]


# --------------------------------------------------------------------------- parts


@dataclass
class Parts:
    """The per-image correctness one value is made of, and how: ``value(accuracies)``
    maps the part accuracies (each (B,) in percent) to the value (B,).

    ``classes``: per part, the (N,) class label of each test image where that part is
    resampled by class (a cluster bootstrap: classes drawn with replacement, each with all
    its images), None where it is resampled image by image (the default)."""

    bits: list[np.ndarray]
    digests: list[str]
    combine: Callable[[list[np.ndarray]], np.ndarray]
    classes: list[np.ndarray | None] | None = None

    @classmethod
    def plain(cls, bits: Any) -> Parts:
        """One part: the (N,) correctness of one accuracy, resampled image by image."""
        return cls([np.asarray(bits, dtype=bool)], [""], identity)

    def class_labels(self, part: int) -> np.ndarray | None:
        """The class labels of part ``part`` if it is resampled by class, else None."""
        return self.classes[part] if self.classes else None


def identity(accs: list[np.ndarray]) -> np.ndarray:
    """The ``combine`` of a one-part value: its accuracy."""
    return accs[0]


def _hm(accs: list[np.ndarray]) -> np.ndarray:
    b, n = accs
    total = b + n
    return np.where(total > 0, 2 * b * n / np.where(total > 0, total, 1), 0.0)


def _mean(accs: list[np.ndarray]) -> np.ndarray:
    return sum(accs) / len(accs)


def _bits(entry: Any) -> tuple[np.ndarray, str] | None:
    if isinstance(entry, Mapping) and isinstance(entry.get("correct"), str):
        return decode_correct(entry["correct"]), str(entry.get("test_labels", ""))
    return None


def _labels(entry: Any) -> np.ndarray | None:
    if isinstance(entry, Mapping) and isinstance(entry.get("labels"), str):
        return decode_labels(entry["labels"])
    return None


def parts_of(
    record: Mapping[str, Any], value: str = "accuracy", by_class: bool = False
) -> Parts | None:
    """The :class:`Parts` of ``value`` in a record (None without per-image correctness).

    ``by_class``: the new-class part of a base-to-new value (``new_accuracy``, ``hm``) is
    resampled by class, from the per-image labels the record stores (``metrics["new"]
    ["labels"]``; a record without them keeps the image bootstrap: see
    :func:`resampled_by_class`)."""
    metrics = record.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    b2n = record.get("protocol") == "base_to_new" or "base" in metrics
    names: list[str] = []
    if value == "hm" or (value == "accuracy" and b2n):
        names, combine = ["base", "new"], _hm
        entries = [metrics.get("base"), metrics.get("new")]
    elif value in ("base_accuracy", "new_accuracy"):
        names, combine = [value.split("_")[0]], identity
        entries = [metrics.get(names[0])]
    elif value.startswith("transfer:"):
        detail = metrics.get("transfer_detail") or {}
        entries, combine = [detail.get(value.split(":", 1)[1])], identity
    elif value == "transfer_mean":
        detail = metrics.get("transfer_detail") or {}
        entries, combine = [detail[k] for k in sorted(detail)], _mean
        if not entries:
            return None
    elif value == "accuracy":
        entries, combine = [metrics], identity
    else:
        return None
    got = [_bits(e) for e in entries]
    if any(g is None for g in got):
        return None
    classes = None
    if by_class and "new" in names:
        classes = [_labels(e) if n == "new" else None for n, e in zip(names, entries, strict=True)]
    return Parts([g[0] for g in got], [g[1] for g in got], combine, classes)


def resampled_by_class(parts: Sequence[Parts]) -> bool:
    """Whether every one of ``parts`` resamples some part by class (else none should)."""
    return bool(parts) and all(
        any(p.class_labels(j) is not None for j in range(len(p.bits))) for p in parts
    )


def value_of(record: Mapping[str, Any], value: str) -> float:
    """The number ``value`` names in a record (``transfer:<dataset>`` from metrics)."""
    if value.startswith("transfer:"):
        transfer = (record.get("metrics") or {}).get("transfer") or {}
        got = transfer.get(value.split(":", 1)[1])
        return float("nan") if got is None else float(got)
    if value == "transfer_mean":
        transfer = (record.get("metrics") or {}).get("transfer") or {}
        return float(np.mean(list(transfer.values()))) if transfer else float("nan")
    got = record.get(value)
    return float("nan") if got is None else float(got)


# --------------------------------------------------------------------------- intervals


def _quantile(df: float, confidence: float) -> float:
    from scipy import stats

    p = 0.5 + confidence / 2
    return float(stats.norm.ppf(p) if not math.isfinite(df) else stats.t.ppf(p, df))


def boot_seed_mean(
    sides: list[list[Parts]], signs: list[float], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(B,) bootstrap replicates of mean_s sum_side sign * value(side, s), resampling the
    images of each part once per replicate, shared across seeds and sides.

    ``sides[j][s]``: the Parts of side j at seed s; all share part lengths. A part with
    class labels in the first Parts (:attr:`Parts.classes`) is resampled by class instead:
    G classes drawn with replacement (w_g: how often class g is drawn), its accuracy
    100 * sum_g w_g k_g / sum_g w_g n_g (k_g of the n_g images of class g correct), the
    draw shared like the image resample."""
    first = sides[0][0]
    groups = [_class_index(first.class_labels(j)) for j in range(len(first.bits))]
    out = np.zeros(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, max(b.size for b in first.bits))))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        idx = [
            rng.integers(0, b.size, size=(size, b.size))
            if g is None
            else _class_weights(g, size, rng)
            for b, g in zip(first.bits, groups, strict=True)
        ]
        total = np.zeros(size)
        for side, sign in zip(sides, signs, strict=True):
            for parts in side:
                accs = [
                    b[i].mean(axis=1) * 100.0 if g is None else _class_accuracy(b, g, i)
                    for b, i, g in zip(parts.bits, idx, groups, strict=True)
                ]
                total += sign * parts.combine(accs)
        out[start : start + size] = total / len(sides[0])
    return out


def _class_index(labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(class of each image as 0..G-1, images per class) of (N,) labels, None for None."""
    if labels is None:
        return None
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return inverse, counts


def _class_weights(group: tuple[np.ndarray, np.ndarray], size: int, rng) -> np.ndarray:
    """(size, G) times each class is drawn in ``size`` resamples of the G classes."""
    g = group[1].size
    draws = rng.integers(0, g, size=(size, g)) + g * np.arange(size)[:, None]
    return np.bincount(draws.ravel(), minlength=size * g).reshape(size, g)


def _class_accuracy(
    bits: np.ndarray, group: tuple[np.ndarray, np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """(size,) accuracies (percent) of the class resamples ``weights`` (size, G)."""
    inverse, counts = group
    correct = np.bincount(inverse, weights=bits.astype(float), minlength=counts.size)
    return 100.0 * (weights @ correct) / (weights @ counts)


def _binomial_var(values: np.ndarray, sizes: np.ndarray) -> float:
    """Variance of the seed-mean from p (1 - p) / n per seed, seeds perfectly correlated."""
    p = np.clip(values / 100.0, 0, 1)
    sd = np.sqrt(p * (1 - p) / np.maximum(sizes, 1)) * 100.0
    return float(np.mean(sd) ** 2)


def se_and_df(seed_std: float, seeds: int, v_img: float) -> tuple[float, float]:
    """(se, df) of a seed-mean: se = sqrt(V_img + s^2 / S), df the Welch-Satterthwaite
    degrees of freedom se^4 / ((s^2/S)^2 / (S - 1)) (inf when the seed term is absent)."""
    seeds = int(seeds)
    seed_var = seed_std**2 / seeds if seeds > 1 and math.isfinite(seed_std) else 0.0
    v_img = v_img if math.isfinite(v_img) else 0.0
    se = math.sqrt(v_img + seed_var)
    df = se**4 / (seed_var**2 / (seeds - 1)) if seed_var > 0 else math.inf
    return se, df


def combine_interval(
    mean: float, seed_std: float, seeds: int, v_img: float, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(low, high, se) of ``mean`` from the two variance terms (see the module docstring)."""
    se, df = se_and_df(seed_std, seeds, v_img)
    if se == 0:
        return mean, mean, 0.0
    q = _quantile(df, confidence)
    return mean - q * se, mean + q * se, se


def mean_interval(
    values: Sequence[float],
    correct: Sequence[Any] | None = None,
    *,
    test_images: Sequence[int] | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean, std and interval of one configuration's per-seed ``values`` (percent).

    ``correct``: per seed, the (n,) correctness of each test image (bools; same images for
    every seed) or a :class:`Parts`; without it, ``test_images`` (n per seed) gives the
    binomial fallback, and without both the interval covers the seeds only.
    Returns ``mean, std, n_seeds, ci_low, ci_high, se, v_img, interval`` (the method used).
    """
    vals = np.asarray(values, dtype=float)
    seeds = int(vals.size)
    mean = float(vals.mean()) if seeds else float("nan")
    std = float(vals.std(ddof=1)) if seeds > 1 else float("nan")
    rng = np.random.default_rng(seed)
    if correct is not None and len(correct):
        parts = [c if isinstance(c, Parts) else Parts.plain(c) for c in correct]
        _check_same_images([parts])
        v_img = float(boot_seed_mean([parts], [1.0], n_boot, rng).var(ddof=1))
        how = "bootstrap over test images"
    elif test_images is not None:
        v_img = _binomial_var(vals, np.asarray(test_images, dtype=float))
        how = "binomial (no per-image record)"
    else:
        v_img, how = float("nan"), "seeds only (no per-image record)"
    how += " + seed spread" if seeds > 1 else "; one seed: seed spread unknown"
    low, high, se = combine_interval(mean, std, seeds, v_img, confidence)
    return {
        "mean": mean,
        "std": std,
        "n_seeds": seeds,
        "ci_low": low,
        "ci_high": high,
        "se": se,
        "v_img": v_img,
        "interval": how,
    }


def _check_same_images(sides: list[list[Parts]]) -> None:
    shapes = {tuple(b.size for b in p.bits) for side in sides for p in side}
    digests = {tuple(p.digests) for side in sides for p in side} - {("",) * len(sides[0][0].bits)}
    if len(shapes) > 1 or len(digests) > 1:
        raise ValueError(
            "these runs were scored on different test images (sizes "
            f"{sorted(shapes)}); compare only runs on the same test split"
        )


# --------------------------------------------------------------------------- tables


def summarize(
    frame: pd.DataFrame,
    by: Sequence[str] = ("label",),
    value: str = "accuracy",
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per configuration: ``by``, the key columns that distinguish configurations
    sharing a ``by`` value (:func:`group_columns`), then ``n_seeds``, ``seeds``, ``mean``,
    ``std``, ``ci_low``, ``ci_high``, ``interval`` (the method), ``test_images``,
    ``duplicates`` and ``config_id``. Never averages two configurations."""
    keyed = configurations(frame)
    cols = group_columns(keyed, by)
    base = [
        *cols,
        "n_seeds",
        "seeds",
        "mean",
        "std",
        "ci_low",
        "ci_high",
        "interval",
        "test_images",
        "duplicates",
        "config_id",
    ]
    if not len(keyed):
        return pd.DataFrame(columns=base)
    rows = []
    for cid, group in keyed.groupby("config_id", sort=False):
        group = group.sort_values("seed")
        records = group.to_dict("records")
        vals = [value_of(r, value) for r in records]
        keep = [i for i, v in enumerate(vals) if math.isfinite(v)]
        if not keep:
            continue
        records = [records[i] for i in keep]
        vals = [vals[i] for i in keep]
        parts = [parts_of(r, value) for r in records]
        sizes = [test_images(r, value) for r in records]
        stats = mean_interval(
            vals,
            parts if all(p is not None for p in parts) else None,
            test_images=sizes if all(s is not None for s in sizes) else None,
            n_boot=n_boot,
            confidence=confidence,
        )
        first = records[0]
        rows.append(
            {
                **{c: first.get(c) for c in cols},
                "n_seeds": stats["n_seeds"],
                "seeds": ",".join(str(int(r["seed"])) for r in records),
                **{k: stats[k] for k in ("mean", "std", "ci_low", "ci_high", "interval")},
                "test_images": sizes[0],
                "duplicates": int(group["duplicates"].sum()),
                "config_id": cid,
            }
        )
    return pd.DataFrame(rows, columns=base)


def test_images(record: Mapping[str, Any], value: str) -> int | None:
    """The test images behind ``value`` in a record (summed over its parts; None if the
    record says neither its per-image correctness nor ``metrics["test_images"]``)."""
    parts = parts_of(record, value)
    if parts is not None:
        return int(sum(b.size for b in parts.bits))
    metrics = record.get("metrics") or {}
    n = metrics.get("test_images") if isinstance(metrics, Mapping) else None
    return int(n) if n is not None else None


def _select(keyed: pd.DataFrame, which: str | Mapping[str, Any]) -> pd.DataFrame:
    if isinstance(which, str):
        which = {"label": which}
    mask = pd.Series(True, index=keyed.index)
    for k, v in which.items():
        if k not in keyed:
            raise ValueError(f"no column {k!r} to select on; columns: {sorted(keyed.columns)}")
        column = keyed[k]
        mask &= column.isin(list(v)) if isinstance(v, (list, tuple, set)) else column == v
    return keyed[mask]


def _one_config_per_cell(side: pd.DataFrame, on: list[str], name: str) -> None:
    """Raise (naming the columns that differ) if a cell of ``on`` holds two configurations."""
    cells = side.groupby(on, dropna=False, sort=False) if on else [((), side)]
    keys = side.attrs.get("group_columns") or []
    for cell, group in cells:
        if group["config_id"].nunique() > 1:
            differ = [k for k in keys if k in group and group[k].nunique(dropna=False) > 1]
            raise ValueError(
                f"side {name} has {group['config_id'].nunique()} configurations in cell "
                f"{dict(zip(on, cell if isinstance(cell, tuple) else (cell,), strict=False))}"
                f" (they differ in {differ}); narrow the selection with those columns"
            )


@dataclass
class Cell:
    """One paired comparison cell: per-seed values of both sides and their differences."""

    cell: dict[str, Any]
    seeds: list[int]
    values_a: np.ndarray
    values_b: np.ndarray
    v_img: float  # variance of the mean difference over test-image resamples
    interval: str  # how v_img was obtained

    @property
    def diff(self) -> np.ndarray:
        return self.values_a - self.values_b


def paired_cells(
    frame: pd.DataFrame,
    a: str | Mapping[str, Any],
    b: str | Mapping[str, Any],
    on: Sequence[str] = ("dataset", "shots"),
    value: str = "accuracy",
    *,
    n_boot: int = N_BOOT,
    by_class: bool = False,
) -> list[Cell]:
    """The :class:`Cell` of each ``on`` value both sides have (see :func:`paired_difference`).

    ``by_class``: resample the new classes of a base-to-new value by class
    (:func:`parts_of`), where every record of the cell stores its per-image labels; the
    cell's ``interval`` says which resample was used."""
    keyed = configurations(frame)
    on = list(on)
    side_a, side_b = _select(keyed, a), _select(keyed, b)
    if not len(side_a) or not len(side_b):
        return []
    side_a.attrs, side_b.attrs = keyed.attrs, keyed.attrs
    _one_config_per_cell(side_a, on, "a")
    _one_config_per_cell(side_b, on, "b")
    groups_b = dict(iter(side_b.groupby(on, dropna=False))) if on else {(): side_b}
    groups_a = side_a.groupby(on, dropna=False) if on else [((), side_a)]
    rng = np.random.default_rng(0)
    cells = []
    for cell, ga in groups_a:
        gb = groups_b.get(cell)
        pairs = _pairs(ga, gb) if gb is not None else []
        if not pairs:
            continue
        cell = cell if isinstance(cell, tuple) else (cell,)
        ra, rb = [p[0] for p in pairs], [p[1] for p in pairs]
        va = np.array([value_of(r, value) for r in ra])
        vb = np.array([value_of(r, value) for r in rb])
        pa = [parts_of(r, value, by_class) for r in ra]
        pb = [parts_of(r, value, by_class) for r in rb]
        if all(p is not None for p in pa + pb):
            _check_same_images([pa, pb])
            how = "paired bootstrap over test images"
            if by_class and any(p.classes for p in pa + pb):
                if resampled_by_class(pa + pb):
                    how += " (new classes resampled by class)"
                else:  # some record lacks its labels: every side resamples images
                    pa = [dataclasses.replace(p, classes=None) for p in pa]
                    pb = [dataclasses.replace(p, classes=None) for p in pb]
                    how += " (new classes by image: a record lacks per-image labels)"
            boot = boot_seed_mean([pa, pb], [1.0, -1.0], n_boot, rng)
            v_img = float(boot.var(ddof=1))
        else:
            sizes = np.array([test_images(r, value) or 0 for r in ra], dtype=float)
            # binomial variance of each side, no credit for the pairing (conservative)
            v_img = _binomial_var(va, sizes) + _binomial_var(vb, sizes)
            how = "binomial, unpaired (no per-image record)"
        seeds = [int(p[2]) for p in pairs]
        cells.append(Cell(dict(zip(on, cell, strict=True)), seeds, va, vb, v_img, how))
    return cells


def paired_difference(
    frame: pd.DataFrame,
    a: str | Mapping[str, Any],
    b: str | Mapping[str, Any],
    on: Sequence[str] = ("dataset", "shots"),
    value: str = "accuracy",
    *,
    pool: bool = False,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    by_class: bool = False,
) -> pd.DataFrame:
    """Paired A - B per cell of ``on``: rows ``on``, ``a``, ``b``, ``n_seeds``, ``seeds``,
    ``mean_a``, ``mean_b``, ``diff``, ``std`` (of the per-seed differences), ``ci_low``,
    ``ci_high``, ``interval``; ``pool=True`` adds a row (``on`` values ``"all"``) averaging
    over the cells.

    ``a`` / ``b``: a label (variant, else method) or ``{column: value}`` over the columns of
    :func:`configurations` (e.g. ``{"method": "clip_adapter", "options.ratio": 0.6}``).
    Within a cell each side must be one configuration (else a ValueError names the
    columns that differ); seeds present on both sides are paired (a seed-independent side
    with one seed is used for every seed). Cells without a common seed are left out.
    ``by_class``: new classes resampled by class (see below and :func:`paired_cells`).
    """
    on = list(on)
    columns = [*on, "a", "b", "n_seeds", "seeds", "mean_a", "mean_b", "diff", "std"]
    columns += ["ci_low", "ci_high", "interval"]
    cells = paired_cells(frame, a, b, on, value, n_boot=n_boot, by_class=by_class)
    name_a, name_b = _name(a), _name(b)
    rows = [cell_summary(c, name_a, name_b, confidence) for c in cells]
    if pool and len(cells) > 1:
        pooled = pool_cells(cells, {k: "all" for k in on})
        if pooled is not None:
            rows.append(cell_summary(pooled, name_a, name_b, confidence))
    return pd.DataFrame(rows, columns=columns)


def pool_cells(cells: Sequence[Cell], label: dict[str, Any], weights=None) -> Cell | None:
    """A weighted sum of cells over their common seeds (default weights 1/len: the mean);
    the cells' test images are taken as independent (distinct datasets). With weights
    (1, -1) it is the interaction (A - B on one dataset) - (A - B on another)."""
    weights = [1.0 / len(cells)] * len(cells) if weights is None else list(weights)
    common = sorted(set.intersection(*(set(c.seeds) for c in cells)))
    if not common:
        return None

    def at(c: Cell, values: np.ndarray) -> np.ndarray:
        return np.array([values[c.seeds.index(s)] for s in common])

    va = sum(w * at(c, c.values_a) for w, c in zip(weights, cells, strict=True))
    vb = sum(w * at(c, c.values_b) for w, c in zip(weights, cells, strict=True))
    v_img = sum(w**2 * c.v_img for w, c in zip(weights, cells, strict=True))
    how = cells[0].interval + f" (combined over {len(cells)} cells)"
    return Cell(label, common, np.asarray(va), np.asarray(vb), float(v_img), how)


def cell_summary(
    c: Cell, name_a: str = "a", name_b: str = "b", confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """A :func:`paired_difference` row of one cell: the mean difference, its interval, and the
    interval's ``se`` and degrees of freedom ``df`` (:func:`se_and_df`)."""
    d = c.diff
    n = int(d.size)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else float("nan")
    low, high, se = combine_interval(mean, std, n, c.v_img, confidence)
    how = c.interval + (" + seed spread" if n > 1 else "; one seed: seed spread unknown")
    return {
        **c.cell,
        "a": name_a,
        "b": name_b,
        "n_seeds": n,
        "seeds": ",".join(str(s) for s in c.seeds),
        "mean_a": float(np.mean(c.values_a)),
        "mean_b": float(np.mean(c.values_b)),
        "diff": mean,
        "std": std,
        "ci_low": low,
        "ci_high": high,
        "se": se,
        "df": se_and_df(std, n, c.v_img)[1],
        "interval": how,
    }


def _name(which: str | Mapping[str, Any]) -> str:
    if isinstance(which, str):
        return which
    return ", ".join(f"{k}={v}" for k, v in which.items())


def _pairs(ga: pd.DataFrame, gb: pd.DataFrame) -> list[tuple[dict, dict, int]]:
    """(record A, record B, seed) for the seeds both have; a seed-independent side with
    one seed pairs with every seed of the other."""
    ra = {int(r["seed"]): r for r in ga.to_dict("records")}
    rb = {int(r["seed"]): r for r in gb.to_dict("records")}
    if len(rb) == 1 and len(ra) > 1 and _seed_free(next(iter(rb.values()))):
        only = next(iter(rb.values()))
        return [(ra[s], only, s) for s in sorted(ra)]
    if len(ra) == 1 and len(rb) > 1 and _seed_free(next(iter(ra.values()))):
        only = next(iter(ra.values()))
        return [(only, rb[s], s) for s in sorted(rb)]
    return [(ra[s], rb[s], s) for s in sorted(set(ra) & set(rb))]


def _seed_free(record: Mapping[str, Any]) -> bool:
    return record.get("method") in SEED_INDEPENDENT


# --------------------------------------------------------------------------- display


def format_interval(mean: float, std: float, low: float, high: float, n: int, digits=1) -> str:
    """``"38.4 +- 1.2 [36.0, 40.8] n=3"`` (no std with one seed)."""
    if not math.isfinite(mean):
        return "-"
    spread = f" +- {std:.{digits}f}" if n > 1 and math.isfinite(std) else ""
    return f"{mean:.{digits}f}{spread} [{low:.{digits}f}, {high:.{digits}f}] n={n}"


def compact(summary: pd.DataFrame, digits: int = 1, column: str = "accuracy") -> pd.DataFrame:
    """A :func:`summarize` (or :func:`paired_difference`) frame for reading: the numbers
    folded into one ``column`` of :func:`format_interval` strings."""
    if not len(summary):
        return summary
    mean = "diff" if "diff" in summary else "mean"
    text = [
        format_interval(m, s, lo, hi, int(n), digits)
        for m, s, lo, hi, n in zip(
            summary[mean],
            summary["std"],
            summary["ci_low"],
            summary["ci_high"],
            summary["n_seeds"],
            strict=True,
        )
    ]
    drop = [mean, "std", "ci_low", "ci_high", "interval", "config_id", "seeds", "duplicates"]
    out = summary.drop(columns=[c for c in drop if c in summary])
    out.insert(len(out.columns), column, text)
    return out


def pivot(
    summary: pd.DataFrame, index: str | Sequence[str], columns: str | Sequence[str], digits=1
) -> pd.DataFrame:
    """A :func:`summarize` frame as a wide table of ``mean +- std [low, high]`` strings.
    Raises if two configurations fall into one cell (add the column that differs)."""
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)
    if summary.duplicated(index + columns).any():
        extra = [c for c in summary.columns if c in (summary.attrs.get("group_columns") or [])]
        raise ValueError(
            "pivot: several configurations per cell; add the column(s) that differ "
            f"to index or columns (key columns of the summary: {extra or list(summary.columns)})"
        )
    text = compact(summary, digits, "cell")
    return text.pivot(index=index, columns=columns, values="cell")


# --------------------------------------------------------------------------- plain means


def seed_means(
    frame: pd.DataFrame, by: Sequence[str] = ("label",), values: Sequence[str] = ("accuracy",)
) -> pd.DataFrame:
    """One row per configuration: ``by``, the key columns that distinguish configurations
    sharing a ``by`` value (:func:`group_columns`, e.g. ``options.alpha``), then per value
    its plain mean over seeds, ``<value>_std`` and ``<value>_count``. No interval (for
    those, :func:`summarize`). Finished runs only; never averages two configurations, and a
    run stored twice counts once. A frame without ``config`` (no record behind its rows)
    is grouped on ``by`` alone."""
    rows = _finished(frame)
    if not len(rows):
        return pd.DataFrame(columns=[*by, *values])
    by = list(by)
    if "config" in rows:
        rows = configurations(rows)
        by = group_columns(rows, by)
    agg = rows.groupby(by, dropna=False, sort=False)[list(values)].agg(["mean", "std", "count"])
    agg.columns = [f"{v}_{s}" if s != "mean" else v for v, s in agg.columns]
    return agg.reset_index()


def pivot_means(
    frame: pd.DataFrame,
    index: str | Sequence[str],
    columns: str | Sequence[str],
    value: str = "accuracy",
    digits: int = 2,
) -> pd.DataFrame:
    """A wide table of numbers: the mean over seeds of ``value`` per cell, rounded to
    ``digits`` (an empty frame, not an error, when nothing finished). ``frame``: runs, or a
    :func:`seed_means` frame.

    Never averages two configurations into one cell: on runs, the key columns that tell
    the configurations of a cell apart (:func:`group_columns`) join the index; on a
    :func:`seed_means` frame, so do its extra columns where a cell holds several rows. For
    a table with intervals, :func:`pivot` of a :func:`summarize` frame."""
    if not len(frame) or value not in frame:
        return pd.DataFrame()
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)
    rows = _finished(frame)
    if "config" in rows:
        rows = configurations(rows)
        extra = [c for c in group_columns(rows, index + columns) if c not in columns]
        index = list(dict.fromkeys(index + extra))
    elif rows.duplicated(index + columns).any():
        stats = {c for c in rows.columns if c.endswith(("_std", "_count"))} | {value}
        extra = [c for c in rows.columns if c not in stats and c not in index + columns]
        index = index + [c for c in extra if rows[c].nunique(dropna=False) > 1]
    return rows.pivot_table(index=index, columns=columns, values=value).round(digits)


# --------------------------------------------------------------------------- base check

#: The accuracy on a run's own training classes, per protocol: base-to-new trains on the
#: base classes; few-shot on every class of the task.
TRAINING_CLASS_VALUE = {"base_to_new": "base_accuracy", "few_shot": "accuracy"}

#: Columns that make two runs' training classes and test images the same (zero-shot's
#: shots and seed do not matter: it trains on nothing).
SAME_CLASSES = ("dataset", "protocol", "backbone", "pretrained")


#: Known causes of a method ending below zero-shot on its training classes, by method
#: (measured in docs/constants.md); :func:`below_zero_shot`'s ``causes`` override them.
BELOW_ZERO_SHOT_CAUSES = {
    "cocoop": (
        "its Meta-Net's last layer has PyTorch's random init, as in the official code, so "
        "every context token starts shifted by a random bias about 3x its own size and "
        "CoCoOp starts below zero-shot; on tiny-emoji-vit version 4 (seed 1) that layer at "
        "zero (option meta_init='zero') gives base 48.5% against 34.3%, though over seeds "
        "1-3 both average 44.2% (docs/constants.md)"
    ),
    "prograd": (
        "its official 16 context vectors start as zero vectors before the init phrase, far "
        "from zero-shot (tiny-emoji-vit version 4 at initialisation: 20.3% against 41.0%); "
        "the phrase alone (option n_ctx='words') starts at zero-shot and ends at base 54.2% "
        "against 41.6% (mean of seeds 1-3; docs/constants.md)"
    ),
    "coop": (
        "its 16 context vectors start random (the official few-shot default), not at "
        "zero-shot; on tiny-emoji-rn version 5 (base-to-new, 4 shots, seed 1) random context "
        "ends at base 16.0% and the backbone's phrase (option init='backbone') at 46.2% "
        "(docs/constants.md)"
    ),
    "linear_probe": (
        "it learns each class from its K images alone, without the text encoder; the papers "
        "have it below zero-shot at low shots too (CLIP's Figure 6, CLIP-Adapter's Figure 3)"
    ),
    "proda": (
        "its 32 prompts start random (the paper's init), not at zero-shot; with every "
        "prompt from the backbone's phrase (option init='backbone') it ends at base 43.2% "
        "against 36.7% on tiny-emoji-vit version 4 (docs/constants.md)"
    ),
}


def _chosen_epoch(chosen: Any) -> Any:
    return chosen.get("best_epoch") if isinstance(chosen, Mapping) else None


def below_zero_shot(
    frame: pd.DataFrame, causes: Mapping[str, str] | None = None, tolerance: float = 0.0
) -> pd.DataFrame:
    """Trained methods that end below zero-shot CLIP on their own training classes.

    For every trained configuration (a method other than zero-shot with trainable
    parameters, on a base-to-new or few-shot run) the mean over seeds of its test accuracy
    on the classes it trained on (base accuracy at its chosen epoch; few-shot: accuracy)
    beside zero-shot's on the same classes and images (same dataset, protocol, backbone and
    weights). One row per configuration whose mean is below zero-shot's by more than
    ``tolerance`` points, worst first: ``label``, ``method``, ``dataset``, ``backbone``,
    ``shots``, ``seeds``, ``trained`` and ``zero_shot`` (accuracy, %), ``gap`` (trained minus
    zero-shot) with ``gap_low`` / ``gap_high``, its paired 95% interval over seeds and test
    images (:func:`paired_cells`; NaN where it cannot be formed), ``chosen_epochs`` (the
    epochs kept, per seed; empty where the method has none) and ``cause``
    (``causes[label]``, else ``causes[method]``, else :data:`BELOW_ZERO_SHOT_CAUSES`, else
    :data:`WITHIN_NOISE` where the interval includes 0, else "unknown").
    Configurations without a zero-shot run on the same classes are not listed.
    """
    cols = [
        "label", "method", "dataset", "backbone", "shots", "seeds", "trained", "zero_shot",
        "gap", "gap_low", "gap_high", "chosen_epochs", "cause",
    ]  # fmt: skip
    finished = _finished(frame)
    rows = finished
    if not len(rows) or "protocol" not in rows:
        return pd.DataFrame(columns=cols)
    rows = rows[rows["protocol"].isin(list(TRAINING_CLASS_VALUE))].copy()
    if not len(rows):
        return pd.DataFrame(columns=cols)
    rows["_value"] = [
        r.get(TRAINING_CLASS_VALUE[r["protocol"]], float("nan")) for r in rows.to_dict("records")
    ]
    same = [c for c in SAME_CLASSES if c in rows]
    rows[same] = rows[same].fillna("").astype(str)
    zero = rows[rows["method"].isin(SEED_INDEPENDENT)].groupby(same)["_value"].mean()
    params = rows.get("trainable_params", pd.Series(float("nan"), index=rows.index))
    trained = rows[~rows["method"].isin(SEED_INDEPENDENT) & ~(params.fillna(1) <= 0)]
    if not len(trained) or not len(zero):
        return pd.DataFrame(columns=cols)
    keyed = configurations(trained)
    causes = {**BELOW_ZERO_SHOT_CAUSES, **(causes or {})}
    out = []
    for _, group in keyed.groupby("config_id", sort=False):
        first = group.iloc[0]
        key = tuple(str(first[c]) if c in first else "" for c in same)
        key = key[0] if len(key) == 1 else key
        if key not in zero.index:
            continue
        value, reference = float(group["_value"].mean()), float(zero.loc[key])
        if not value < reference - tolerance:
            continue
        label, method = str(first["label"]), str(first["method"])
        epochs = [_chosen_epoch(c) for c in group.get("chosen", [])]
        low, high = _gap_interval(finished, same, key, str(first["config_id"]), first)
        cause = causes.get(label, causes.get(method))
        if cause is None:
            cause = WITHIN_NOISE if low <= 0 <= high else "unknown"
        out.append(
            {
                "label": label,
                "method": method,
                "dataset": first.get("dataset"),
                "backbone": first.get("backbone"),
                "shots": first.get("shots"),
                "seeds": len(group),
                "trained": round(value, 1),
                "zero_shot": round(reference, 1),
                "gap": round(value - reference, 1),
                "gap_low": round(low, 1),
                "gap_high": round(high, 1),
                "chosen_epochs": ", ".join(str(e) for e in epochs if e is not None),
                "cause": cause,
            }
        )
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(out, columns=cols).sort_values("gap", kind="stable").reset_index(drop=True)


#: The cause given where nothing is known and the gap is not resolved.
WITHIN_NOISE = "none needed: the gap's 95% interval includes 0 (not resolved at this scale)"


def _gap_interval(
    finished: pd.DataFrame, same: list[str], key: Any, config: str, first: Mapping[str, Any]
) -> tuple[float, float]:
    """The paired 95% interval of one configuration minus zero-shot on its training classes
    (NaN, NaN where the zero-shot runs disagree, nothing pairs, or the records lack
    per-image correctness)."""
    key = key if isinstance(key, tuple) else (key,)
    mask = pd.Series(True, index=finished.index)
    for column, wanted in zip(same, key, strict=True):
        mask &= finished[column].fillna("").astype(str) == wanted
    here = finished[mask]
    value = TRAINING_CLASS_VALUE[str(first["protocol"])]
    zero = configurations(here[here["method"].isin(SEED_INDEPENDENT)])
    # zero-shot stored under settings that do not change it (shots, val) gives one answer
    answers = {round(value_of(r, value), 9) for r in zero.to_dict("records")}
    if len(answers) != 1:
        return float("nan"), float("nan")
    b = {"config_id": zero["config_id"].iloc[0]}
    cells = paired_cells(here, {"config_id": config}, b, on=[], value=value)
    if not cells or not cells[0].interval.startswith("paired bootstrap"):
        return float("nan"), float("nan")  # no per-image records: no interval claimed
    summary = cell_summary(cells[0])
    low, high = float(summary["ci_low"]), float(summary["ci_high"])
    return (low, high) if np.isfinite(low) and np.isfinite(high) else (float("nan"),) * 2


def _gap_text(row: Any) -> str:
    low, high = getattr(row, "gap_low", float("nan")), getattr(row, "gap_high", float("nan"))
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return f", 95% interval [{low:+.1f}, {high:+.1f}]"


def below_zero_shot_lines(table: pd.DataFrame, model: str = "") -> list[str]:
    """One Markdown sentence per row of :func:`below_zero_shot` (none: one saying so)."""
    on = f" on {model}" if model else ""
    if not len(table):
        return [
            f"Every trained method ends at or above zero-shot CLIP on its own training classes{on}."
        ]
    return [
        f"**{r.label}** ends **below zero-shot** on its own training classes{on} "
        f"(`{r.dataset}`, {r.shots} shots, {r.seeds} seed(s)): {r.trained:.1f}% against "
        f"{r.zero_shot:.1f}% ({r.gap:+.1f}{_gap_text(r)}). Cause: {r.cause}."
        for r in table.itertuples()
    ]
