"""Few-shot samples as CoOp draws them (``generate_fewshot_dataset``), cached on disk.

For K shots and a seed: one ``random.Random(seed)`` (the state CoOp's ``random.seed(seed)``
gives); classes in order of first appearance in the training list; per class
``rng.sample(items, K)``; then, from the same stream, the validation split with
``min(K, 4)`` per class. Given the same split lists this reproduces CoOp's samples.

- A class with fewer than K items raises :class:`DatasetError` naming it and its count;
  ``allow_fewer=True`` takes all its items instead (CoOp's behaviour).
- ``shots=0`` gives empty train and val (zero-shot); ``shots < 0`` keeps the full splits.
- A dataset read with ``val_is_test`` (ImageNet, official DualAdapter protocol) keeps its
  val (= test) whole, as the official code does; only train is sampled.

With ``cache_dir``, the sample is stored as JSON under
``<cache_dir>/fewshot/<dataset>-<fingerprint>/shot_<K>-seed_<seed>.json`` (written
atomically; paths relative to the dataset folder, so a moved data root still hits) and read
back from there on later calls. The fingerprint (:meth:`Dataset.fingerprint`) changes when
the split lists do, so a stale sample is never reused.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import Dataset, DatasetError, Datum
from .base_new import relabel
from .build import write_json_atomic

#: Few-shot validation size per class: ``min(shots, VAL_SHOTS_CAP)``.
VAL_SHOTS_CAP = 4
CACHE_FORMAT = 1


@dataclass
class FewShotSplit:
    """A K-shot training sample and its validation sample (``min(K, 4)`` per class)."""

    train: list[Datum]
    val: list[Datum]
    shots: int
    seed: int
    #: where the sample is cached (None without a cache directory)
    cache_path: Path | None = None
    #: True when this sample was read back from ``cache_path``
    from_cache: bool = False

    def subsample(self, classes: Sequence[int]) -> FewShotSplit:
        """Keep only ``classes`` (original labels), relabelled 0..n-1 in the given order.

        CoOp samples shots over all classes and then keeps the base (or new) ones; this does
        the second step. See :mod:`fewclip.data.base_new`.
        """
        return FewShotSplit(
            relabel(self.train, classes), relabel(self.val, classes), self.shots, self.seed
        )


def _group_by_label(items: Sequence[Datum]) -> dict[int, list[Datum]]:
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    return groups


def _check_counts(items: Sequence[Datum], shots: int, split: str, dataset: str) -> None:
    short = [(g[0].classname, len(g)) for g in _group_by_label(items).values() if len(g) < shots]
    if short:
        listed = ", ".join(f"{name!r} has {n}" for name, n in short[:5])
        more = f" (and {len(short) - 5} more classes)" if len(short) > 5 else ""
        raise DatasetError(
            f"{dataset}: {shots} shots requested but in the {split} split {listed}{more}; "
            "use fewer shots or allow_fewer=True to take all images of such classes"
        )


def sample_per_class(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """CoOp's ``generate_fewshot_dataset`` on one list: ``rng.sample(class_items, shots)`` per
    class (first-appearance order); a class with fewer items gives all of them."""
    out: list[Datum] = []
    for group in _group_by_label(items).values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def cache_path(
    cache_dir: str | Path, dataset: Dataset, shots: int, seed: int, fingerprint: str | None = None
) -> Path:
    """Where :func:`few_shot_split` caches the (``shots``, ``seed``) sample of ``dataset``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_") or "dataset"
    fingerprint = fingerprint or dataset.fingerprint()
    folder = Path(cache_dir).expanduser() / "fewshot" / f"{safe}-{fingerprint}"
    return folder / f"shot_{shots}-seed_{seed}.json"


def _relative(path: str, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path


def _encode(items: Sequence[Datum], root: Path | None) -> list[list]:
    return [[_relative(d.impath, root), d.label, d.classname] for d in items]


def _decode(rows: list, root: Path | None) -> list[Datum]:
    out = []
    for rel, label, classname in rows:
        path = Path(rel)
        if root is not None and not path.is_absolute():
            path = root / path
        out.append(Datum(str(path), int(label), str(classname)))
    return out


def _read_cache(path: Path, dataset: Dataset, shots: int, seed: int) -> FewShotSplit | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if (raw["format"], raw["shots"], raw["seed"]) != (CACHE_FORMAT, shots, seed):
            return None
        train = _decode(raw["train"], dataset.root)
        val = _decode(raw["val"], dataset.root)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable few-shot cache {path}: {e}", stacklevel=3)
        return None
    return FewShotSplit(train, val, shots, seed, cache_path=path, from_cache=True)


def few_shot_split(
    dataset: Dataset,
    shots: int,
    seed: int,
    cache_dir: str | Path | None = None,
    allow_fewer: bool = False,
) -> FewShotSplit:
    """The K-shot train sample and ``min(K, 4)``-shot val sample of ``dataset`` (see module)."""
    full_val = bool(dataset.extra.get("val_is_test"))
    if shots == 0:
        return FewShotSplit([], [], shots, seed)
    if shots < 0:
        return FewShotSplit(list(dataset.train), list(dataset.val), shots, seed)
    if not dataset.train:
        raise DatasetError(
            f"{dataset.name} has no training split (a test-only dataset); "
            "few-shot samples come from a dataset with training images"
        )
    val_shots = min(shots, VAL_SHOTS_CAP)
    if not allow_fewer:
        _check_counts(dataset.train, shots, "train", dataset.name)
        if not full_val:
            _check_counts(dataset.val, val_shots, "val", dataset.name)
    path = None
    if cache_dir is not None and str(cache_dir) != "":
        fingerprint = dataset.fingerprint()
        path = cache_path(cache_dir, dataset, shots, seed, fingerprint)
    if path is not None:
        cached = _read_cache(path, dataset, shots, seed)
        if cached is not None:
            return cached
    rng = random.Random(seed)
    train = sample_per_class(dataset.train, shots, rng)
    val = list(dataset.val) if full_val else sample_per_class(dataset.val, val_shots, rng)
    if path is not None:
        raw = {
            "format": CACHE_FORMAT,
            "dataset": dataset.name,
            "fingerprint": fingerprint,
            "shots": shots,
            "seed": seed,
            "val_is_test": full_val,
            "train": _encode(train, dataset.root),
            "val": _encode(val, dataset.root),
        }
        try:
            write_json_atomic(path, raw)
        except OSError as e:
            warnings.warn(f"could not cache the few-shot sample at {path}: {e}", stacklevel=2)
    return FewShotSplit(train, val, shots, seed, cache_path=path)
