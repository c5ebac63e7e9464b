"""Base-to-new class split (CoOp's ``subsample_classes``).

Sort the labels; the first ``ceil(C / 2)`` are the base classes, the rest the new ones.
Selected items are relabelled ``0..n-1`` in that order, with their class names (and, for
ImageNet-family datasets, their ``imagenet_indices``) kept alongside.

CoOp draws the few-shot sample over *all* classes and then keeps the base ones; to reproduce
that, sample with :func:`fewclip.data.fewshot.few_shot_split` on the full dataset and call
:meth:`FewShotSplit.subsample` with :func:`base_new_classes`'s base list. Sampling a
:func:`subsample_classes` dataset instead gives a different (equally valid) sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .base import Dataset, DatasetError, Datum

SUBSETS = ("all", "base", "new")


def base_new_classes(dataset: Dataset | int) -> tuple[list[int], list[int]]:
    """``(base, new)`` label lists: the first ``ceil(C/2)`` sorted labels, then the rest."""
    num_classes = dataset if isinstance(dataset, int) else dataset.num_classes
    if num_classes < 2:
        raise DatasetError(f"a base/new split needs at least 2 classes, got {num_classes}")
    m = math.ceil(num_classes / 2)
    labels = list(range(num_classes))
    return labels[:m], labels[m:]


def relabel(items: Sequence[Datum], classes: Sequence[int]) -> list[Datum]:
    """Items whose label is in ``classes``, relabelled to their position in ``classes``."""
    new_label = {c: i for i, c in enumerate(classes)}
    return [Datum(d.impath, new_label[d.label], d.classname) for d in items if d.label in new_label]


def subsample_classes(dataset: Dataset, subset: str) -> Dataset:
    """The ``"base"`` or ``"new"`` half of ``dataset`` (``"all"`` returns it unchanged).

    train/val/test are filtered and relabelled; ``extra["class_indices"]`` holds the original
    labels and ``extra["subset"]`` the half.
    """
    if subset not in SUBSETS:
        raise DatasetError(f"unknown class subset {subset!r}; choose one of {SUBSETS}")
    if subset == "all":
        return dataset
    base, new = base_new_classes(dataset)
    classes = base if subset == "base" else new
    extra = dict(dataset.extra)
    for key in ("imagenet_indices", "wnids"):
        if key in extra:
            extra[key] = [extra[key][c] for c in classes]
    extra["class_indices"] = list(classes)
    extra["subset"] = subset
    return dataclasses.replace(
        dataset,
        classnames=[dataset.classnames[c] for c in classes],
        train=relabel(dataset.train, classes),
        val=relabel(dataset.val, classes),
        test=relabel(dataset.test, classes),
        templates=list(dataset.templates),
        negative_templates=list(dataset.negative_templates),
        description=f"{dataset.description} [{subset} classes]".strip(),
        extra=extra,
    )


def base_new_split(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """``(base, new)`` datasets of :func:`subsample_classes`."""
    return subsample_classes(dataset, "base"), subsample_classes(dataset, "new")
