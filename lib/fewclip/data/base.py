"""What every dataset reader returns, and the registry of readers.

A reader is a function ``(root: Path, **options) -> Dataset`` registered under a name with
:func:`register_dataset`; :func:`load_dataset` looks it up and turns a missing folder into
one clear error. Items are plain :class:`Datum` records (absolute image path, integer
label, class name), so everything downstream (few-shot sampling, feature extraction, split
files) works on lists of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DATA_README = "data/README.md"


class DatasetError(ValueError):
    """Bad dataset input: unknown name, missing folder or split file, too few images."""


@dataclass(frozen=True)
class Datum:
    """One labelled image. ``impath`` is absolute; ``label`` indexes ``Dataset.classnames``."""

    impath: str
    label: int
    classname: str


@dataclass
class Dataset:
    """A benchmark with its three splits, readable class names and prompt templates.

    ``classnames[label]`` is the readable name used in prompts. ``templates`` are the
    positive templates (``"a photo of a {}."``); ``negative_templates`` are DualAdapter's
    (``"a photo without {}."``). Test-only datasets (ImageNet variants) have empty
    train/val lists.
    """

    name: str
    classnames: list[str]
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    templates: list[str]
    negative_templates: list[str] = field(default_factory=list)
    root: Path | None = None
    description: str = ""
    #: reader-specific facts, e.g. ``imagenet_indices`` for the 200-class ImageNet-A/-R
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Datum]:
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; choose one of train, val, test")
        return getattr(self, name)

    def fingerprint(self, items: Sequence[Datum] | None = None) -> str:
        """Hash of (paths relative to root, labels, class names): changes when the data does."""
        items = list(self.train) + list(self.val) + list(self.test) if items is None else items
        return items_fingerprint(items, self.classnames, self.root)


def items_fingerprint(
    items: Sequence[Datum], classnames: Sequence[str], root: Path | None = None
) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(classnames)).encode())
    for d in items:
        path = d.impath
        if root is not None:
            try:
                path = str(Path(d.impath).relative_to(root))
            except ValueError:
                pass
        h.update(f"{path}\t{d.label}\n".encode())
    return h.hexdigest()[:16]


Reader = Callable[..., Dataset]
_READERS: dict[str, Reader] = {}
_FOLDERS: dict[str, str] = {}
_PREFIXES: dict[str, Reader] = {}


def register_dataset(name: str, folder: str | None = None) -> Callable[[Reader], Reader]:
    """Register ``reader(root, **options) -> Dataset`` under ``name``.

    ``folder`` is the sub-folder of the data root the reader expects (CoOp layout); the
    reader receives ``data_root / folder``.
    """

    def wrap(reader: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _READERS[name] = reader
        _FOLDERS[name] = folder if folder is not None else name
        return reader

    return wrap


def register_prefix(prefix: str) -> Callable[[Reader], Reader]:
    """Register ``reader(path, **options) -> Dataset`` for names ``"<prefix>:<path>"``.

    ``load_dataset("folder:my/images", data_root)`` calls the ``folder`` reader with
    ``data_root / "my/images"`` (an absolute path is used as is).
    """

    def wrap(reader: Reader) -> Reader:
        if prefix in _PREFIXES:
            raise ValueError(f"dataset prefix {prefix!r} registered twice")
        _PREFIXES[prefix] = reader
        return reader

    return wrap


def list_datasets() -> list[str]:
    return sorted(_READERS)


def dataset_folder(name: str) -> str:
    _check_name(name)
    return _FOLDERS[name]


def _check_name(name: str) -> None:
    if name not in _READERS:
        forms = "".join(f", or {p}:<path>" for p in sorted(_PREFIXES))
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}{forms}"
        )


def load_dataset(name: str, data_root: str | Path, **options) -> Dataset:
    """Read dataset ``name`` from ``data_root / <its folder>`` (or ``"<prefix>:<path>"``)."""
    data_root = Path(data_root).expanduser()
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        path = Path(rest).expanduser()
        path = path if path.is_absolute() else data_root / path
        if not path.is_dir():
            raise DatasetError(
                f"dataset {name!r}: expected a folder at {path}, which does not exist. "
                f"See {DATA_README}."
            )
        return _PREFIXES[prefix](path, **options)
    _check_name(name)
    folder = data_root / _FOLDERS[name]
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {name!r}: expected its folder at {folder}, which does not exist. "
            f"See {DATA_README} for where to get it and how to lay it out."
        )
    return _READERS[name](folder, **options)
