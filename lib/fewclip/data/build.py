"""Helpers shared by the readers: path checks and turning split lists into a :class:`Dataset`.

Class names: a :class:`Datum` keeps the class name as written in the split file (CoOp's raw
name, e.g. ``"Apply_Eye_Makeup"``), so a split written back is byte-for-byte CoOp's format;
``Dataset.classnames`` holds the readable names used in prompts (``_`` -> space, as CoOp's
prompt learners do, plus per-dataset renames such as EuroSAT's).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import DATA_README, Dataset, DatasetError, Datum
from .splits import SPLITS
from .templates import negative_templates_for, templates_for


def write_json_atomic(path: Path, obj: object) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def absolute(root: str | Path) -> Path:
    """``root`` as an absolute path (``Datum.impath`` is absolute), ``~`` expanded."""
    return Path(root).expanduser().absolute()


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`DatasetError` naming it and the README."""
    if not path.is_dir():
        raise DatasetError(
            f"expected {what} at {path}, which does not exist. "
            f"See {DATA_README} for where to get it and how to lay it out."
        )
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` naming it and the README."""
    if not path.is_file():
        raise DatasetError(
            f"expected {what} at {path}, which does not exist. "
            f"See {DATA_README} for where to get it and how to lay it out."
        )
    return path


def require_source(path: Path, split_file: Path) -> Path:
    """An annotation file needed to build a missing split file; the error names both."""
    if not path.is_file():
        raise DatasetError(
            f"no split file at {split_file}, and {path}, needed to build one, does not exist "
            f"either. See {DATA_README} for where to get them."
        )
    return path


def readable_classname(raw: str, renames: Mapping[str, str] | None = None) -> str:
    """The prompt form of a class name: per-dataset rename, then ``_`` -> space."""
    return (renames or {}).get(raw, raw).replace("_", " ")


def raw_classnames(splits: Mapping[str, Sequence[Datum]], source: str = "") -> list[str]:
    """Class names in label order, from the items (labels must be 0..C-1, names consistent)."""
    names: dict[int, str] = {}
    for part in SPLITS:
        for d in splits.get(part, []):
            known = names.setdefault(d.label, d.classname)
            if known != d.classname:
                raise DatasetError(
                    f"{source or 'split'}: label {d.label} is named both {known!r} and "
                    f"{d.classname!r}"
                )
    if not names:
        raise DatasetError(f"{source or 'split'}: no images listed")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing or min(names) < 0:
        raise DatasetError(
            f"{source or 'split'}: labels must run 0..{max(names)} without gaps; "
            f"missing {missing[:10]}"
        )
    return [names[i] for i in range(len(names))]


def check_first_images(splits: Mapping[str, Sequence[Datum]], source: str) -> None:
    """Cheap layout check: the first image of each split must exist.

    Catches a split file whose images are missing or unpacked elsewhere, without a
    ``stat`` per image.
    """
    for part in SPLITS:
        items = splits.get(part, [])
        if items and not Path(items[0].impath).is_file():
            raise DatasetError(
                f"{source}: the {part} split lists {items[0].impath}, which does not exist; "
                f"are the images unpacked where {DATA_README} says?"
            )


def make_dataset(
    name: str,
    root: Path,
    splits: Mapping[str, Sequence[Datum]],
    classnames: Sequence[str] | None = None,
    renames: Mapping[str, str] | None = None,
    description: str = "",
    extra: dict | None = None,
    templates: Sequence[str] | None = None,
    negative_templates: Sequence[str] | None = None,
) -> Dataset:
    """A :class:`Dataset` with readable class names and the templates of ``name``.

    ``classnames`` (raw, label order) default to those found in the items. The first image
    of each split must exist (:func:`check_first_images`).
    """
    check_first_images(splits, f"{name} ({root})")
    raw = list(classnames) if classnames is not None else raw_classnames(splits, str(root))
    return Dataset(
        name=name,
        classnames=[readable_classname(c, renames) for c in raw],
        train=list(splits.get("train", [])),
        val=list(splits.get("val", [])),
        test=list(splits.get("test", [])),
        templates=list(templates) if templates is not None else templates_for(name),
        negative_templates=(
            list(negative_templates)
            if negative_templates is not None
            else negative_templates_for(name)
        ),
        root=root,
        description=description,
        extra=dict(extra or {}),
    )
