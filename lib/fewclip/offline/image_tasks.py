"""Labelled real images from the package registries, as small few-shot tasks.

- ``fashion_mnist`` (Debian ``dataset-fashion-mnist``): per class 100 train and 25 val
  images drawn from the official training set, 300 test images from the official test set
  (3,000 in all), saved as 28x28 grey-scale PNGs.
- ``animal_mnist`` (PyPI ``animal-mnist``): 1,000 silhouettes per class, per class 100
  train, 25 val, 300 test, 28x28 grey-scale PNGs.
- ``tuxpaint_photos`` (Debian ``tuxpaint-stamps-default``): the stamps that are
  photographs (cut out, transparent background), grouped into 8 classes by their folders
  (:data:`TUX_CLASSES`); composited on white and padded to a 128x128 square; per class 40%
  train, 10% val (>= 1), the rest test.

The images are written under ``<data_root>/<task>/images/<class>/``.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.base import Datum
from .corpus import rgb_on_white
from .sources import SourceError, iter_archive
from .tasks import SplitRule, allocate, class_rng, write_task

FASHION_CLASSES = (
    "t-shirt or top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_DIR = "usr/share/datasets/fashion-mnist/"
#: label order of the package (alphabetical; checked by eye on a contact sheet)
ANIMAL_CLASSES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
ANIMAL_DIR = "animal_mnist/data/Animal_MNIST/"
PER_CLASS = {"train": 100, "val": 25, "test": 300}

TUX_DIR = "usr/share/tuxpaint/stamps/"
#: class -> (folder regular expression on the path under stamps/, excluded file stems).
#: Only photographs: drawings live in ``cartoon/`` folders (and are SVG); the folders below
#: hold photos only, checked by eye. Lobster and shrimp are not fish; the plastic flower
#: and the teddy bear are toys; the currency symbols in money/00_symbols are drawings.
TUX_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bird": (r"animals/birds", ()),
    "mammal": (r"animals/(mammals(/[a-z]+)?|marsupials)", ()),
    "fish": (r"animals/fish", ("lobster", "shrimp")),
    "fruit": (r"food/fruit", ()),
    "vegetable": (r"food/vegetables", ()),
    "flower": (r"plants/flowers", ()),
    "coin": (r"symbols/money/((us|euro|canadian)/coins|japanese)", ()),
    "musical instrument": (r"hobbies/music/[a-z]+", ()),
}
TUX_RULE = SplitRule(train_frac=0.4, val_frac=0.1, min_train=1, min_val=1, min_test=1)
TUX_SIZE = 128


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _reset(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def read_idx(data: bytes) -> np.ndarray:
    """An IDX array (the MNIST format), gzip-compressed or not."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SourceError("not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise SourceError(f"IDX file holds {array.size} values, header says {shape}")
    return array.reshape(shape)


class _NumpyOnly(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (the package ships pickles)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_numpy_pickle(data: bytes) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return np.asarray(_NumpyOnly(io.BytesIO(data)).load())


def _members(archive: Path, prefix: str, names: Iterable[str]) -> dict[str, bytes]:
    wanted = {prefix + n for n in names}
    found = {n[len(prefix) :]: d for n, d in iter_archive(archive, lambda n: n in wanted)}
    missing = sorted(w[len(prefix) :] for w in wanted if w[len(prefix) :] not in found)
    if missing:
        raise SourceError(f"{archive}: missing {', '.join(missing)} under {prefix}")
    return found


def _sample_per_class(
    labels: np.ndarray, counts: dict[str, int], seed: int, task: str, splits: Iterable[str]
) -> dict[str, list[tuple[int, int]]]:
    """Disjoint (index, label) draws per class for the named splits, seeded per class."""
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in splits}
    for label in sorted(set(labels.tolist())):
        pool = np.flatnonzero(labels == label).tolist()
        class_rng(seed, task, str(label)).shuffle(pool)
        start = 0
        for split in out:
            out[split] += [(i, label) for i in sorted(pool[start : start + counts[split]])]
            start += counts[split]
    return out


def _write_gray(
    images: np.ndarray,
    draws: list[tuple[int, int]],
    classnames: tuple[str, ...],
    folder: Path,
    prefix: str,
) -> list[Datum]:
    items = []
    for index, label in draws:
        path = folder / _slug(classnames[label]) / f"{prefix}{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(images[index], dtype=np.uint8)).save(path)
        items.append(Datum(str(path), int(label), classnames[label]))
    return items


def build_fashion_mnist(
    data_root: Path, archive: Path, seed: int, info: dict, log: Callable[[str], None] = print
) -> dict:
    files = _members(
        archive,
        FASHION_DIR,
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ],
    )
    train_x = read_idx(files["train-images-idx3-ubyte.gz"])
    train_y = read_idx(files["train-labels-idx1-ubyte.gz"])
    test_x = read_idx(files["t10k-images-idx3-ubyte.gz"])
    test_y = read_idx(files["t10k-labels-idx1-ubyte.gz"])
    task = "fashion_mnist"
    folder = data_root / task / "images"
    _reset(folder)
    from_train = _sample_per_class(train_y, PER_CLASS, seed, task, ("train", "val"))
    from_test = _sample_per_class(test_y, PER_CLASS, seed, task + ":test", ("test",))
    splits = {
        "train": _write_gray(train_x, from_train["train"], FASHION_CLASSES, folder, "train"),
        "val": _write_gray(train_x, from_train["val"], FASHION_CLASSES, folder, "train"),
        "test": _write_gray(test_x, from_test["test"], FASHION_CLASSES, folder, "t10k"),
    }
    how = (
        f"per class {PER_CLASS['train']} train + {PER_CLASS['val']} val from the official "
        f"training set ({len(train_y)} images), {PER_CLASS['test']} test from the official "
        f"test set ({len(test_y)}); file names keep the official index"
    )
    return write_task(data_root, task, FASHION_CLASSES, splits, folder, {**info, "built": how})


def build_animal_mnist(
    data_root: Path, archive: Path, seed: int, info: dict, log: Callable[[str], None] = print
) -> dict:
    files = _members(archive, ANIMAL_DIR, ["animal_data_version_3.gz", "animal_label_version_3.gz"])
    images = read_numpy_pickle(files["animal_data_version_3.gz"]).astype(np.uint8)
    labels = read_numpy_pickle(files["animal_label_version_3.gz"]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise SourceError(f"animal-mnist: unexpected shapes {images.shape}, {labels.shape}")
    task = "animal_mnist"
    folder = data_root / task / "images"
    _reset(folder)
    draws = _sample_per_class(labels, PER_CLASS, seed, task, ("train", "val", "test"))
    splits = {s: _write_gray(images, d, ANIMAL_CLASSES, folder, "") for s, d in draws.items()}
    how = (
        f"per class {PER_CLASS['train']} train, {PER_CLASS['val']} val, {PER_CLASS['test']} "
        f"test drawn without overlap from the {len(labels)} images; file names keep the index"
    )
    return write_task(data_root, task, ANIMAL_CLASSES, splits, folder, {**info, "built": how})


def tux_class(path: str) -> str | None:
    """The class of a stamp path relative to stamps/, or None (not a photo we use)."""
    if not path.endswith(".png") or "cartoon" in path.split("/"):
        return None
    folder, _, file = path.rpartition("/")
    stem = file[: -len(".png")]
    for name, (pattern, excluded) in TUX_CLASSES.items():
        if re.fullmatch(pattern, folder) and stem not in excluded:
            return name
    return None


def _square_on_white(data: bytes, size: int = TUX_SIZE) -> Image.Image:
    im = rgb_on_white(data)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out


def build_tuxpaint(
    data_root: Path, archive: Path, seed: int, info: dict, log: Callable[[str], None] = print
) -> dict:
    task = "tuxpaint_photos"
    folder = data_root / task / "images"
    _reset(folder)
    by_class: dict[str, list[str]] = {name: [] for name in TUX_CLASSES}

    def want(name: str) -> bool:
        return name.startswith(TUX_DIR) and tux_class(name[len(TUX_DIR) :]) is not None

    for name, data in iter_archive(archive, want):
        rel = name[len(TUX_DIR) :]
        cls = tux_class(rel)
        path = folder / _slug(cls) / (rel[: -len(".png")].replace("/", "__") + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        _square_on_white(data).save(path)
        by_class[cls].append(str(path))
    classnames = tuple(c for c in TUX_CLASSES if by_class[c])
    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classnames):
        parts = allocate([[p] for p in sorted(by_class[cls])], TUX_RULE, class_rng(seed, task, cls))
        if parts is None:
            raise SourceError(f"tuxpaint: class {cls!r} has too few photos ({by_class[cls]})")
        for split, paths in zip(("train", "val", "test"), parts, strict=True):
            splits[split] += [Datum(p, label, cls) for p in paths]
    rules = [
        f"{c}: {p}" + (f" minus {', '.join(x)}" if x else "") for c, (p, x) in TUX_CLASSES.items()
    ]
    how = (
        "photographic stamps (transparent cut-outs) composited on white, fitted into "
        f"{TUX_SIZE}x{TUX_SIZE}; classes by folder: {'; '.join(rules)}; per class {TUX_RULE}"
    )
    return write_task(data_root, task, classnames, splits, folder, {**info, "built": how})
