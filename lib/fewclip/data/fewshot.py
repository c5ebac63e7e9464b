"""Few-shot samples as CoOp draws them (``generate_fewshot_dataset``), cached on disk.

For K shots and a seed: one ``random.Random(seed)`` (the state CoOp's ``random.seed(seed)``
gives); classes in order of first appearance in the training list; per class
``rng.sample(items, K)``; then, from the same stream, the validation split with
``min(K, 4)`` per class. Given the same split lists this reproduces CoOp's samples.

- A class with fewer than K items raises :class:`DatasetError` naming it and its count;
  ``allow_fewer=True`` takes all its items instead (CoOp's behaviour).
- ``shots=0`` gives empty train and val (zero-shot). ``shots < 0`` keeps the full splits:
  this function's own convention for analyses; a run (``RunConfig``, the CLI, notebooks)
  refuses it, since its records are labelled with K.
- A dataset read with ``val_is_test`` (ImageNet, official DualAdapter protocol) keeps its
  val (= test) whole, as the official code does; only train is sampled.

Two named departures from that default:

- ``val="full"``: the whole val split instead of ``min(K, 4)`` per class, as the official
  Tip-Adapter and DualAdapter codes select outside ImageNet (``val="few_shot"``, CoOp's and
  the default, is the realistic few-shot setting).
- ``label_noise=p``: SimNL's noisy-label protocol. Each training shot's label is replaced,
  with probability p, by a uniformly drawn *other* class (:meth:`FewShotSplit.with_label_noise`);
  the val split stays clean (SimNL selects on clean data). The draws come from their own
  generator, seeded by the run seed, after the clean sample is drawn, so the images are
  those of the clean sample and the flips at p = 0.1 are a subset of those at p = 0.3
  (one uniform number and one replacement class per shot, whatever p).

With ``cache_dir``, the sample is stored as JSON under
``<cache_dir>/fewshot/<dataset>-<fingerprint>/shot_<K>-seed_<seed>[-val_full][-noise_<p>].json``
(written atomically; paths relative to the dataset folder, so a moved data root still hits)
and read back from there on later calls; a noisy sample stores its noisy labels and the
clean ones. The fingerprint (:meth:`Dataset.fingerprint`) changes when the split lists do,
so a stale sample is never reused; the file also holds a checksum of its content, so an
edited file (valid JSON, altered sample) is noticed, warned about and drawn again.
"""

from __future__ import annotations

import hashlib
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
#: ``val`` choices: CoOp's few-shot val (default), the whole val split (official Tip/Dual),
#: or none (the train sample of "few_shot", no val image: the no-validation protocol).
VAL_SPLITS = ("few_shot", "full", "none")
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
    #: ``"few_shot"`` (min(K, 4) per class) or ``"full"`` (the whole val split)
    val_split: str = "few_shot"
    #: the label-flip probability applied to ``train`` (0: clean)
    label_noise: float = 0.0
    #: the clean training items (same images and order as ``train``) under label noise
    clean_train: list[Datum] | None = None

    @property
    def flipped(self) -> int:
        """How many training labels the noise changed."""
        if self.clean_train is None:
            return 0
        return sum(a.label != b.label for a, b in zip(self.train, self.clean_train, strict=True))

    def subsample(self, classes: Sequence[int]) -> FewShotSplit:
        """Keep only ``classes`` (original labels), relabelled 0..n-1 in the given order.

        CoOp samples shots over all classes and then keeps the base (or new) ones; this does
        the second step. See :mod:`fewclip.data.base_new`. A noisy split cannot be
        subsampled (a flipped label may point outside ``classes``): subsample the clean
        split, then call :meth:`with_label_noise`.
        """
        if self.clean_train is not None:
            raise ValueError("subsample the clean split, then add label noise")
        return FewShotSplit(
            relabel(self.train, classes),
            relabel(self.val, classes),
            self.shots,
            self.seed,
            val_split=self.val_split,
        )

    def with_label_noise(self, p: float, classnames: Sequence[str]) -> FewShotSplit:
        """This split with each training label replaced, with probability ``p``, by a
        uniformly drawn other class of ``classnames`` (SimNL's protocol); val unchanged.

        Per shot, in order, one uniform u and one class r from the other C - 1 are drawn
        from ``random.Random`` seeded by the split's seed (its own stream, not the
        sampler's); the label flips to r when u < p. So the draws do not depend on p.
        """
        if not 0.0 <= p < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {p}")
        if p == 0.0 or self.clean_train is not None:
            if self.clean_train is not None and p != self.label_noise:
                raise ValueError("this split already carries label noise")
            return self
        num_classes = len(classnames)
        if num_classes < 2:
            raise ValueError("label noise needs at least two classes")
        rng = random.Random(f"fewclip-label-noise-{self.seed}")
        noisy = []
        for d in self.train:
            u, r = rng.random(), rng.randrange(num_classes - 1)
            if u < p:
                label = r if r < d.label else r + 1
                noisy.append(Datum(d.impath, label, classnames[label]))
            else:
                noisy.append(d)
        return FewShotSplit(
            noisy,
            list(self.val),
            self.shots,
            self.seed,
            cache_path=self.cache_path,
            from_cache=self.from_cache,
            val_split=self.val_split,
            label_noise=p,
            clean_train=list(self.train),
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
            "use fewer shots or allow_fewer=True (fewclip run --allow-fewer) to take all images of "
            "such classes"
        )


def sample_per_class(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """CoOp's ``generate_fewshot_dataset`` on one list: ``rng.sample(class_items, shots)`` per
    class (first-appearance order); a class with fewer items gives all of them."""
    out: list[Datum] = []
    for group in _group_by_label(items).values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def cache_path(
    cache_dir: str | Path,
    dataset: Dataset,
    shots: int,
    seed: int,
    fingerprint: str | None = None,
    val: str = "few_shot",
    label_noise: float = 0.0,
) -> Path:
    """Where :func:`few_shot_split` caches the (``shots``, ``seed``, ``val``,
    ``label_noise``) sample of ``dataset``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_") or "dataset"
    fingerprint = fingerprint or dataset.fingerprint()
    folder = Path(cache_dir).expanduser() / "fewshot" / f"{safe}-{fingerprint}"
    suffix = ("-val_full" if val == "full" else "") + (
        f"-noise_{label_noise:g}" if label_noise else ""
    )
    return folder / f"shot_{shots}-seed_{seed}{suffix}.json"


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


def _content_checksum(raw: dict) -> str:
    """SHA-256 of a cached sample's content (every key but ``checksum``)."""
    body = {k: v for k, v in raw.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_cache(
    path: Path, dataset: Dataset, shots: int, seed: int, val: str, label_noise: float
) -> FewShotSplit | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if "checksum" not in raw:  # written before samples carried one: drawn again quietly
            return None
        if raw["checksum"] != _content_checksum(raw):
            warnings.warn(
                f"few-shot cache {path} was changed after it was written (checksum mismatch); "
                "drawing the sample again",
                stacklevel=3,
            )
            return None
        if (raw["format"], raw["shots"], raw["seed"]) != (CACHE_FORMAT, shots, seed):
            return None
        if (raw.get("val_split", "few_shot"), raw.get("label_noise", 0.0)) != (val, label_noise):
            return None
        train = _decode(raw["train"], dataset.root)
        val_items = _decode(raw["val"], dataset.root)
        clean = raw.get("clean_train")
        clean_train = _decode(clean, dataset.root) if clean is not None else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable few-shot cache {path}: {e}", stacklevel=3)
        return None
    return FewShotSplit(
        train,
        val_items,
        shots,
        seed,
        cache_path=path,
        from_cache=True,
        val_split=val,
        label_noise=label_noise,
        clean_train=clean_train,
    )


def few_shot_split(
    dataset: Dataset,
    shots: int,
    seed: int,
    cache_dir: str | Path | None = None,
    allow_fewer: bool = False,
    val: str = "few_shot",
    label_noise: float = 0.0,
) -> FewShotSplit:
    """The K-shot train sample and ``min(K, 4)``-shot val sample of ``dataset`` (``val="full"``:
    the whole val split; ``val="none"``: no val image, the same train sample), with
    ``label_noise`` applied to the train labels (see module)."""
    if val not in VAL_SPLITS:
        raise ValueError(f"val must be one of {VAL_SPLITS}, got {val!r}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    full_val = (bool(dataset.extra.get("val_is_test")) or val == "full") and val != "none"
    if shots == 0:
        return FewShotSplit([], [], shots, seed, val_split=val)
    if shots < 0:
        val_items = [] if val == "none" else list(dataset.val)
        split = FewShotSplit(list(dataset.train), val_items, shots, seed, val_split=val)
        return split.with_label_noise(label_noise, dataset.classnames)
    if not dataset.train:
        raise DatasetError(
            f"{dataset.name} has no training split (a test-only dataset); "
            "few-shot samples come from a dataset with training images"
        )
    val_shots = min(shots, VAL_SHOTS_CAP)
    if not allow_fewer:
        _check_counts(dataset.train, shots, "train", dataset.name)
        if not full_val and val != "none":
            _check_counts(dataset.val, val_shots, "val", dataset.name)
    path = None
    if cache_dir is not None and str(cache_dir) != "":
        fingerprint = dataset.fingerprint()
        path = cache_path(cache_dir, dataset, shots, seed, fingerprint, val, label_noise)
    if path is not None:
        cached = _read_cache(path, dataset, shots, seed, val, label_noise)
        if cached is not None:
            return cached
    rng = random.Random(seed)
    train = sample_per_class(dataset.train, shots, rng)
    if val == "none":  # the same train sample as "few_shot" (drawn first), no val image
        val_items = []
    elif full_val:
        val_items = list(dataset.val)
    else:
        val_items = sample_per_class(dataset.val, val_shots, rng)
    split = FewShotSplit(train, val_items, shots, seed, cache_path=path, val_split=val)
    split = split.with_label_noise(label_noise, dataset.classnames)
    if path is not None:
        raw = {
            "format": CACHE_FORMAT,
            "dataset": dataset.name,
            "fingerprint": fingerprint,
            "shots": shots,
            "seed": seed,
            "val_is_test": bool(dataset.extra.get("val_is_test")),
            "val_split": val,
            "label_noise": label_noise,
            "train": _encode(split.train, dataset.root),
            "val": _encode(val_items, dataset.root),
        }
        if split.clean_train is not None:
            raw["clean_train"] = _encode(split.clean_train, dataset.root)
        raw["checksum"] = _content_checksum(raw)
        try:
            write_json_atomic(path, raw)
        except OSError as e:
            warnings.warn(f"could not cache the few-shot sample at {path}: {e}", stacklevel=2)
    return split
