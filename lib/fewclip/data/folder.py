"""Bring your own data: a folder with one sub-folder of images per class.

::

    my_images/
        golden_retriever/  001.jpg 002.png ...
        tabby_cat/         ...

``load_dataset("folder:my_images", data_root)`` (relative to the data root, or an absolute
path) or ``load_dataset("image_folder", "path/to/my_images")`` reads it. Class names are
the folder names, sorted, with ``_`` -> space in prompts. Files are kept if their extension
is an image one (:data:`IMAGE_EXTENSIONS`). The first time, a CoOp-style split (50/20/30 per
class, seeded) is generated and saved as ``split_fewclip.json`` inside the folder (or at
``split_file=``); later loads read it, so every run sees the same split. A saved split that
no longer matches the class folders raises an error asking to delete it.

Options: ``templates`` / ``negative_templates`` (a template string with ``{}`` or a list of
them; default ``"a photo of a {}."`` / ``"a photo without {}."``), ``split_seed``,
``p_train``, ``p_val``, ``dataset_name`` (default ``"folder:<folder name>"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Dataset, DatasetError, register_dataset, register_prefix
from .build import absolute, make_dataset, raw_classnames
from .splits import SPLIT_SEED, list_dir, read_or_create_split, split_folder
from .templates import DEFAULT_NEGATIVE_TEMPLATES, DEFAULT_TEMPLATES

FOLDER_SPLIT_FILE = "split_fewclip.json"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _template_list(value: str | Sequence[str] | None, default: Sequence[str], what: str):
    templates = [value] if isinstance(value, str) else list(value or default)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise DatasetError(f"{what} must contain '{{}}' for the class name; got {bad or templates}")
    return templates


def read_image_folder(
    root: Path,
    templates: str | Sequence[str] | None = None,
    negative_templates: str | Sequence[str] | None = None,
    split_file: str | Path | None = None,
    split_seed: int = SPLIT_SEED,
    p_train: float = 0.5,
    p_val: float = 0.2,
    dataset_name: str | None = None,
) -> Dataset:
    """Read an image folder (see the module docstring)."""
    root = absolute(root)
    classes = list_dir(root, dirs=True)
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders found (one folder per class expected)")
    split_path = Path(split_file).expanduser() if split_file else root / FOLDER_SPLIT_FILE
    if not split_path.is_absolute():
        split_path = root / split_path
    splits = read_or_create_split(
        split_path,
        root,
        lambda: split_folder(root, split_seed, p_train, p_val, keep=is_image_file),
    )
    raw = raw_classnames(splits, str(split_path))
    if raw != classes:
        raise DatasetError(
            f"the saved split {split_path} lists classes {raw[:5]}... but {root} has class "
            f"folders {classes[:5]}...; delete the split file to generate a new one"
        )
    return make_dataset(
        dataset_name or f"folder:{root.name}",
        root,
        splits,
        templates=_template_list(templates, DEFAULT_TEMPLATES, "templates"),
        negative_templates=_template_list(
            negative_templates, DEFAULT_NEGATIVE_TEMPLATES, "negative_templates"
        ),
        description=f"image folder {root}: {len(classes)} classes",
        extra={"split_file": str(split_path)},
    )


register_dataset("image_folder", folder=".")(read_image_folder)
register_prefix("folder")(read_image_folder)
