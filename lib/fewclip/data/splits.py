"""CoOp split files: ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``.

Paths in a split file are relative to an image folder given by the reader (for most
datasets the folder holding the images; for StanfordCars the dataset folder itself).
"""

from __future__ import annotations

import json
import os
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
    tmp = split_file.with_name(split_file.name + ".tmp")
    tmp.write_text(json.dumps(raw))
    os.replace(tmp, split_file)
    return split_file
