"""Datasets: readers for the CoOp benchmarks and image folders, few-shot samples, templates.

Importing this package registers the readers: ``load_dataset("dtd", "data")`` reads
``data/dtd`` in CoOp's layout; ``load_dataset("folder:my_images", "data")`` reads a folder of
class folders. See ``data/README.md`` for where to get each benchmark.
"""

from . import coop, folder, imagenet  # noqa: F401  (register the readers)
from .base import (
    Dataset,
    DatasetError,
    Datum,
    list_datasets,
    load_dataset,
    register_dataset,
    register_prefix,
)
from .base_new import base_new_classes, base_new_split, relabel, subsample_classes
from .fewshot import FewShotSplit, few_shot_split
from .folder import read_image_folder
from .splits import read_split, write_split
from .templates import (
    NEGATIVE_TEMPLATES,
    TEMPLATES,
    load_descriptions,
    negative_templates_for,
    templates_for,
)

__all__ = [
    "NEGATIVE_TEMPLATES",
    "TEMPLATES",
    "Dataset",
    "DatasetError",
    "Datum",
    "FewShotSplit",
    "base_new_classes",
    "base_new_split",
    "few_shot_split",
    "list_datasets",
    "load_dataset",
    "load_descriptions",
    "negative_templates_for",
    "read_image_folder",
    "read_split",
    "register_dataset",
    "register_prefix",
    "relabel",
    "subsample_classes",
    "templates_for",
    "write_split",
]
