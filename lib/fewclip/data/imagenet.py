"""ImageNet and its four test-only variants (ImageNet-V2, -Sketch, -A, -R), in CoOp's layout.

Class order: the ImageNet class list is the wnids of ``classnames.txt`` sorted (CoOp's file
is already sorted, and CoOp's ImageNet reader labels the sorted ``images/train`` folders), so
ImageNet label ``i`` is the ``i``-th sorted wnid. Variants find ``classnames.txt`` in their
own folder or in the sibling ``imagenet/`` folder.

ImageNet splits
    CoOp reads ``images/train/<wnid>/`` as train and ``images/val/<wnid>/`` as test, with no
    validation split (its val *is* the test set). Our default is leak-free: ``val`` is a
    seeded hold-out of ``val_per_class`` (50) training images per class, removed from
    ``train``. ``val_is_test=True`` reproduces the official DualAdapter / Tip-Adapter code
    (val = the full test set, ``train`` untouched); :func:`fewclip.data.fewshot.few_shot_split`
    then keeps that val whole instead of sampling it.

Listing cache
    Listing 1.28M files takes minutes on a network drive, so the listing is cached as a JSON
    file in CoOp's split format (``train`` = all of ``images/train``, ``test`` = all of
    ``images/val``, paths relative to ``images/``, plus the ``wnids``), by default
    ``imagenet/listing_fewclip.json`` next to the data (``listing_file=`` puts it
    elsewhere). It is rebuilt when the class folders change or with ``refresh=True``; a
    read-only data folder only costs a warning. The val hold-out is recomputed from it.

Variants (test only; ``train`` and ``val`` are empty)
    - ``imagenet_v2``: ``imagenetv2-matched-frequency-format-val/<0..999>/``, folder ``i``
      is ImageNet class ``i``.
    - ``imagenet_sketch``: ``images/<wnid>/`` (or ``sketch/<wnid>/`` as the archive
      unpacks); labels are ImageNet indices (1000 classes).
    - ``imagenet_a``, ``imagenet_r``: ``imagenet-a/<wnid>/``, ``imagenet-r/<wnid>/``, 200
      classes each, labelled 0..199 in sorted wnid order; ``extra["imagenet_indices"]``
      gives each class's ImageNet index, so a 1000-way classifier can be restricted with
      ``logits[:, indices]``.

Every ImageNet-family dataset has ``extra["wnids"]`` (per label) and
``extra["imagenet_indices"]`` (ImageNet index per label).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

from .base import DATA_README, Dataset, DatasetError, Datum, register_dataset
from .build import absolute, make_dataset, require_dir, require_file, write_json_atomic
from .splits import list_dir

CLASSNAMES_FILE = "classnames.txt"
LISTING_FILE = "listing_fewclip.json"
LISTING_FORMAT = 1
#: Default ImageNet validation hold-out: training images per class (ImageNet's val has 50).
VAL_PER_CLASS = 50
VAL_SEED = 1


def read_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt`` ("n01440764 tench" per line) -> {wnid: class name}, file order."""
    names: dict[str, str] = {}
    for line in (
        require_file(path, "the ImageNet class list classnames.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    ):
        if not line.strip():
            continue
        wnid, *words = line.strip().split(" ")
        names[wnid] = " ".join(words)
    if not names:
        raise DatasetError(f"{path} lists no classes")
    return names


def find_classnames(folder: Path) -> Path:
    """``classnames.txt`` in ``folder`` or in the sibling ``imagenet/`` folder."""
    for candidate in (folder / CLASSNAMES_FILE, folder.parent / "imagenet" / CLASSNAMES_FILE):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"expected the ImageNet class list at {folder / CLASSNAMES_FILE} or "
        f"{folder.parent / 'imagenet' / CLASSNAMES_FILE}; neither exists. "
        f"See {DATA_README} (copy imagenet/classnames.txt)."
    )


def _class_order(names: dict[str, str]) -> list[str]:
    return sorted(names)


def _list_class_folders(
    split_dir: Path, folders: list[str], labels: list[int], names: dict[str, str]
) -> list[Datum]:
    items = []
    for label, folder in zip(labels, folders, strict=True):
        if folder not in names:
            raise DatasetError(f"{split_dir / folder}: {folder!r} is not in {CLASSNAMES_FILE}")
        prefix = f"{split_dir / folder}{os.sep}"
        for imname in list_dir(split_dir / folder, dirs=False):
            items.append(Datum(prefix + imname, label, names[folder]))
    return items


def _read_listing(
    path: Path, image_dir: Path, wnids: list[str], names: dict[str, str]
) -> dict[str, list[Datum]] | None:
    """The cached listing if it is readable and lists the same classes, else None.

    Class names come from the current ``classnames.txt``, not from the cache.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if raw.get("format") != LISTING_FORMAT or raw.get("wnids") != wnids:
        return None
    if any(w not in names for w in wnids) or not all(p in raw for p in ("train", "test")):
        return None
    prefix = f"{image_dir}{os.sep}"  # string joins: 1.3M Path joins take seconds
    return {
        part: [Datum(prefix + rel, int(y), names[wnids[int(y)]]) for rel, y, _ in raw[part]]
        for part in ("train", "test")
    }


def _write_listing(path: Path, image_dir: Path, wnids: list[str], splits: dict) -> None:
    raw: dict = {"format": LISTING_FORMAT, "wnids": wnids, "val": []}
    n = len(f"{image_dir}{os.sep}")  # items were listed under image_dir
    for part in ("train", "test"):
        raw[part] = [[d.impath[n:], d.label, d.classname] for d in splits[part]]
    try:
        write_json_atomic(path, raw)
    except OSError as e:
        warnings.warn(f"could not cache the ImageNet listing at {path}: {e}", stacklevel=3)


def hold_out_val(train: list[Datum], per_class: int, seed: int) -> tuple[list[Datum], list[Datum]]:
    """Move ``per_class`` random training images of each class to a validation split.

    Classes in label order, one ``random.Random(seed)``; returns ``(train, val)``.
    """
    by_label: dict[int, list[Datum]] = {}
    for d in train:
        by_label.setdefault(d.label, []).append(d)
    rng = random.Random(seed)
    val: list[Datum] = []
    for label in sorted(by_label):
        items = by_label[label]
        if len(items) <= per_class:
            raise DatasetError(
                f"ImageNet class {items[0].classname!r} has {len(items)} training images: too "
                f"few to hold out {per_class} for validation (lower val_per_class)"
            )
        val.extend(rng.sample(items, per_class))
    held = set(val)
    return [d for d in train if d not in held], val


@register_dataset("imagenet", folder="imagenet")
def imagenet(
    root: Path,
    val_is_test: bool = False,
    val_per_class: int = VAL_PER_CLASS,
    val_seed: int = VAL_SEED,
    listing_file: str | Path | None = None,
    refresh: bool = False,
) -> Dataset:
    """ImageNet-1k; see the module docstring for the validation split and the listing cache."""
    root = absolute(root)
    names = read_classnames(root / CLASSNAMES_FILE)
    image_dir = require_dir(root / "images", "the ImageNet image folder (images/train, images/val)")
    train_dir = require_dir(image_dir / "train", "the ImageNet training images")
    test_dir = require_dir(image_dir / "val", "the ImageNet validation images (our test set)")
    wnids = list_dir(train_dir, dirs=True)
    test_wnids = list_dir(test_dir, dirs=True)
    if wnids != test_wnids:
        raise DatasetError(
            f"{train_dir} and {test_dir} have different class folders "
            f"({len(wnids)} vs {len(test_wnids)}); images/val must be sorted into <wnid>/ "
            f"folders. See {DATA_README}."
        )
    listing = Path(listing_file).expanduser() if listing_file else root / LISTING_FILE
    splits = None if refresh else _read_listing(listing, image_dir, wnids, names)
    if splits is None:
        labels = list(range(len(wnids)))
        splits = {
            "train": _list_class_folders(train_dir, wnids, labels, names),
            "test": _list_class_folders(test_dir, wnids, labels, names),
        }
        _write_listing(listing, image_dir, wnids, splits)
    if val_is_test:
        train, val = splits["train"], splits["test"]
        how = "val = test (official DualAdapter/Tip-Adapter protocol, not leak-free)"
    else:
        train, val = hold_out_val(splits["train"], val_per_class, val_seed)
        how = f"val = {val_per_class} held-out training images per class (seed {val_seed})"
    order = _class_order(names)
    index = {w: i for i, w in enumerate(order)}
    return make_dataset(
        "imagenet",
        root,
        {"train": train, "val": val, "test": splits["test"]},
        classnames=[names[w] for w in wnids],
        description=f"ImageNet: {len(wnids)} classes; {how}",
        extra={
            "wnids": wnids,
            "imagenet_indices": [index[w] for w in wnids],
            "val_is_test": val_is_test,
            "val_per_class": 0 if val_is_test else val_per_class,
            "listing_file": str(listing),
        },
    )


def _variant(
    name: str, root: Path, image_dir: Path, folders: list[str], full: bool, description: str
) -> Dataset:
    """A test-only variant over ``image_dir/<folder>``; ``full`` labels by ImageNet index."""
    names = read_classnames(find_classnames(root))
    order = _class_order(names)
    index = {w: i for i, w in enumerate(order)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DatasetError(f"{image_dir}: folders {unknown[:5]} are not in {CLASSNAMES_FILE}")
    wnids = order if full else folders
    labels = [index[f] for f in folders] if full else list(range(len(folders)))
    items = _list_class_folders(image_dir, folders, labels, names)
    return make_dataset(
        name,
        root,
        {"test": items},
        classnames=[names[w] for w in wnids],
        description=description,
        extra={"wnids": wnids, "imagenet_indices": [index[w] for w in wnids]},
    )


@register_dataset("imagenet_v2", folder="imagenetv2")
def imagenet_v2(root: Path) -> Dataset:
    """ImageNet-V2 matched-frequency: folder ``i`` holds ImageNet class ``i``."""
    root = absolute(root)
    image_dir = require_dir(
        root / "imagenetv2-matched-frequency-format-val", "the ImageNet-V2 image folder"
    )
    names = read_classnames(find_classnames(root))
    order = _class_order(names)
    items = []
    for label, wnid in enumerate(order):
        class_dir = require_dir(image_dir / str(label), f"the ImageNet-V2 folder of class {label}")
        items.extend(
            Datum(str(class_dir / f), label, names[wnid]) for f in list_dir(class_dir, dirs=False)
        )
    return make_dataset(
        "imagenet_v2",
        root,
        {"test": items},
        classnames=[names[w] for w in order],
        description="ImageNet-V2 (matched frequency): 1000 classes, test only",
        extra={"wnids": order, "imagenet_indices": list(range(len(order)))},
    )


@register_dataset("imagenet_sketch", folder="imagenet-sketch")
def imagenet_sketch(root: Path) -> Dataset:
    """ImageNet-Sketch: ``images/<wnid>/`` (``sketch/<wnid>/`` accepted too)."""
    root = absolute(root)
    image_dir = root / "images"
    if not image_dir.is_dir() and (root / "sketch").is_dir():
        image_dir = root / "sketch"
    require_dir(image_dir, "the ImageNet-Sketch image folder")
    return _variant(
        "imagenet_sketch",
        root,
        image_dir,
        list_dir(image_dir, dirs=True),
        full=True,
        description="ImageNet-Sketch: 1000 classes, test only",
    )


@register_dataset("imagenet_a", folder="imagenet-adversarial")
def imagenet_a(root: Path) -> Dataset:
    """ImageNet-A: 200 classes; ``extra["imagenet_indices"]`` maps them into ImageNet."""
    root = absolute(root)
    image_dir = require_dir(root / "imagenet-a", "the ImageNet-A image folder")
    return _variant(
        "imagenet_a",
        root,
        image_dir,
        list_dir(image_dir, dirs=True),
        full=False,
        description="ImageNet-A (natural adversarial examples): 200 classes, test only",
    )


@register_dataset("imagenet_r", folder="imagenet-rendition")
def imagenet_r(root: Path) -> Dataset:
    """ImageNet-R: 200 classes; ``extra["imagenet_indices"]`` maps them into ImageNet."""
    root = absolute(root)
    image_dir = require_dir(root / "imagenet-r", "the ImageNet-R image folder")
    return _variant(
        "imagenet_r",
        root,
        image_dir,
        list_dir(image_dir, dirs=True),
        full=False,
        description="ImageNet-R (renditions): 200 classes, test only",
    )
