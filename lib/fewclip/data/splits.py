"""CoOp split files: ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``.

Paths in a split file are relative to an image folder given by the reader (for most
datasets the folder holding the images; for StanfordCars the dataset folder itself).
"""

from __future__ import annotations

import json
import os
import random
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import DATA_README, DatasetError, Datum

SPLITS = ("train", "val", "test")


def read_split(split_file: str | Path, image_dir: str | Path) -> dict[str, list[Datum]]:
    """Read a CoOp split JSON; returns split name -> items with absolute paths."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DatasetError(
            f"split file not found: {split_file}. See {DATA_README} for where to get it."
        )
    try:
        raw = json.loads(split_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"split file {split_file} is not valid JSON: {e}") from e
    image_dir = Path(image_dir)
    out: dict[str, list[Datum]] = {}
    for name in SPLITS:
        out[name] = [
            Datum(str(image_dir / rel), int(label), str(cname))
            for rel, label, cname in raw.get(name, [])
        ]
    return out


def write_split(
    splits: dict[str, list[Datum]], split_file: str | Path, image_dir: str | Path
) -> Path:
    """Write items as a CoOp split JSON with paths relative to ``image_dir`` (atomically)."""
    split_file = Path(split_file)
    image_dir = Path(image_dir)
    raw = {
        name: [
            [os.path.relpath(d.impath, image_dir), d.label, d.classname]
            for d in splits.get(name, [])
        ]
        for name in SPLITS
    }
    split_file.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per writer: processes on several nodes may generate it at once
    tmp = split_file.with_name(f"{split_file.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(raw))
        os.replace(tmp, split_file)
    finally:
        tmp.unlink(missing_ok=True)
    return split_file


# --- Generating a split when none exists (CoOp's ``read_and_split_data`` and
# ``split_trainval``) ----------------------------------------------------------------------
#
# CoOp shuffles with the global ``random`` module after ``random.seed(cfg.SEED)``; we use one
# ``random.Random(seed)`` per generated split (same numbers as ``random.seed(seed)``). CoOp
# lists files with ``os.listdir`` (filesystem order); we sort them first, so a generated
# split is the same on every machine. Sizes use Python's ``round`` (half to even), as CoOp.

#: Seed of generated split files (CoOp's first seed).
SPLIT_SEED = 1


def _rng(seed: int | random.Random) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def list_dir(folder: str | Path, dirs: bool | None = None) -> list[str]:
    """Sorted non-hidden entry names of ``folder``; ``dirs`` True/False keeps dirs/files only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"expected a folder at {folder}. See {DATA_README}.")
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if dirs is not None and entry.is_dir() != dirs:
            continue
        names.append(entry.name)
    return sorted(names)


def split_per_class(
    images: list[str],
    label: int,
    classname: str,
    rng: random.Random,
    p_train: float = 0.5,
    p_val: float = 0.2,
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Shuffle one class's images and cut them into train / val / test (CoOp's rounding)."""
    images = list(images)
    rng.shuffle(images)
    n_total = len(images)
    n_train = round(n_total * p_train)
    n_val = round(n_total * p_val)
    n_test = n_total - n_train - n_val
    if n_train <= 0 or n_val <= 0 or n_test <= 0:
        raise DatasetError(
            f"class {classname!r} has {n_total} images: too few to split into train/val/test "
            f"({n_train}/{n_val}/{n_test}); each part needs at least one image"
        )

    def items(paths: list[str]) -> list[Datum]:
        return [Datum(p, label, classname) for p in paths]

    return (
        items(images[:n_train]),
        items(images[n_train : n_train + n_val]),
        items(images[n_train + n_val :]),
    )


def split_folder(
    image_dir: str | Path,
    seed: int | random.Random = SPLIT_SEED,
    p_train: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_cnames: dict[str, str] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> dict[str, list[Datum]]:
    """CoOp's ``read_and_split_data``: one sub-folder per class, 50/20/30 per class.

    Classes are the sorted sub-folder names minus ``ignored``; label = position in that list;
    ``new_cnames`` renames classes (Caltech101, EuroSAT). ``keep(filename)`` filters files.
    """
    image_dir = Path(image_dir)
    rng = _rng(seed)
    categories = [c for c in list_dir(image_dir, dirs=True) if c not in ignored]
    if not categories:
        raise DatasetError(f"no class folders found in {image_dir}. See {DATA_README}.")
    out: dict[str, list[Datum]] = {name: [] for name in SPLITS}
    for label, category in enumerate(categories):
        names = list_dir(image_dir / category, dirs=False)
        if keep is not None:
            names = [n for n in names if keep(n)]
        paths = [str(image_dir / category / n) for n in names]
        classname = (new_cnames or {}).get(category, category)
        parts = split_per_class(paths, label, classname, rng, p_train, p_val)
        for name, part in zip(SPLITS, parts, strict=True):
            out[name].extend(part)
    return out


def split_trainval(
    trainval: Sequence[Datum], seed: int | random.Random = SPLIT_SEED, p_val: float = 0.2
) -> tuple[list[Datum], list[Datum]]:
    """CoOp's ``split_trainval``: per label (first-appearance order) shuffle, ``round(n*p_val)``
    items to val, the rest to train."""
    rng = _rng(seed)
    tracker: dict[int, list[int]] = {}
    for idx, item in enumerate(trainval):
        tracker.setdefault(item.label, []).append(idx)
    train: list[Datum] = []
    val: list[Datum] = []
    for idxs in tracker.values():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            name = trainval[idxs[0]].classname
            raise DatasetError(
                f"class {name!r} has {len(idxs)} train+val images: too few to hold out "
                f"{p_val:.0%} for validation"
            )
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_or_create_split(
    split_file: str | Path,
    image_dir: str | Path,
    create: Callable[[], dict[str, list[Datum]]],
) -> dict[str, list[Datum]]:
    """Read ``split_file`` if it exists; otherwise ``create()`` the splits and save them there.

    Saving is best effort: a read-only data folder gives a warning, not an error.
    """
    split_file = Path(split_file)
    if split_file.is_file():
        return read_split(split_file, image_dir)
    splits = create()
    try:
        write_split(splits, split_file, image_dir)
    except OSError as e:
        warnings.warn(f"could not save the generated split to {split_file}: {e}", stacklevel=2)
    return splits
