"""Prompt templates per benchmark, DualAdapter's negative templates, and CuPL descriptions.

Tables, keyed by the registered dataset name:

- :data:`TEMPLATES`: the positive templates a reader puts in ``Dataset.templates``
  (zero-shot CLIP, CLIP-Adapter, Tip-Adapter, DualAdapter). ImageNet and its four variants
  use Tip-Adapter's 7-template ensemble; :data:`SINGLE_TEMPLATES` has CoOp's one-template
  versions (``"a photo of a {}."`` for ImageNet) and :data:`APEX_TEMPLATES` APEX's changes.
- :data:`NEGATIVE_TEMPLATES`: DualAdapter's negative templates (``Dataset.negative_templates``).
  ImageNet has 14: seven negations of the ensemble above and seven more "in the same
  spirit"; of those seven, the first (``"an image completely lacking a {}."``) is the
  example quoted in our spec and the other six (:data:`OUR_IMAGENET_NEGATIVES`) were written
  for this package.

:func:`load_descriptions` reads a CuPL-style JSON file (class name -> sentences), the
source of DualAdapter's description classifier.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetError

#: Tip-Adapter's ImageNet ensemble (also DualAdapter's positive templates on ImageNet).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: The six ImageNet negatives written for this package (not from the DualAdapter paper).
OUR_IMAGENET_NEGATIVES: tuple[str, ...] = (
    "a scene in which no {} appears.",
    "a picture that does not show a {}.",
    "a photo of something other than a {}.",
    "a blurry photo with no {} in it.",
    "a drawing without any {}.",
    "a close-up photo that contains no {}.",
)

#: DualAdapter's ImageNet negatives: one per ensemble template, then seven more.
IMAGENET_NEGATIVE_TEMPLATES: tuple[str, ...] = (
    "itap without any {}.",
    "a bad photo with no {} in it.",
    "a origami piece that isn't a {}.",
    "a photo with no large {}.",
    "a video game scene without a {}.",
    "art that doesn't include a {}.",
    "a photo with no small {}.",
    "an image completely lacking a {}.",
    *OUR_IMAGENET_NEGATIVES,
)

IMAGENET_FAMILY = ("imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")

#: Positive templates per dataset (the per-dataset table of the spec).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "oxford_flowers": ("a photo of a {}, a type of flower.",),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.",),
    "dtd": ("{} texture.",),
    "eurosat": ("a centered satellite photo of {}.",),
    "stanford_cars": ("a photo of a {}.",),
    "food101": ("a photo of {}, a type of food.",),
    "sun397": ("a photo of a {}.",),
    "caltech101": ("a photo of a {}.",),
    "ucf101": ("a photo of a person doing {}.",),
    **{name: IMAGENET_TEMPLATES for name in IMAGENET_FAMILY},
}

#: DualAdapter's negative templates per dataset.
NEGATIVE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "caltech101": ("a photo without {}.",),
    "sun397": ("a photo without {}.",),
    "dtd": ("not {} texture.",),
    "eurosat": ("a centered satellite photo without {}.",),
    "fgvc_aircraft": ("a photo without {}, a type of aircraft.",),
    "food101": ("a photo without {}, a type of food.",),
    "oxford_flowers": ("a photo without {}, a type of flower.",),
    "oxford_pets": ("a photo without {}, a type of pet.",),
    "stanford_cars": ("a photo of no {}.",),
    "ucf101": ("a photo of a person not doing {}.",),
    **{name: IMAGENET_NEGATIVE_TEMPLATES for name in IMAGENET_FAMILY},
}

#: CoOp's single hand-crafted template (differs from :data:`TEMPLATES` only for ImageNet).
SINGLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    **{name: t[:1] for name, t in TEMPLATES.items()},
    **{name: ("a photo of a {}.",) for name in IMAGENET_FAMILY},
}

#: APEX's hand-crafted templates where they differ from :data:`TEMPLATES`.
APEX_TEMPLATES: dict[str, tuple[str, ...]] = {"dtd": ("a photo of a {} texture.",)}

#: Templates for datasets that have none of their own (image folders, unknown names).
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
DEFAULT_NEGATIVE_TEMPLATES: tuple[str, ...] = ("a photo without {}.",)

TEMPLATE_STYLES = ("default", "single", "apex")


def templates_for(name: str, style: str = "default") -> list[str]:
    """Positive templates of dataset ``name``: ``"default"``, ``"single"`` (CoOp) or ``"apex"``."""
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"unknown template style {style!r}; choose one of {TEMPLATE_STYLES}")
    base = TEMPLATES.get(name, DEFAULT_TEMPLATES)
    if style == "single":
        return list(SINGLE_TEMPLATES.get(name, base[:1]))
    if style == "apex":
        return list(APEX_TEMPLATES.get(name, SINGLE_TEMPLATES.get(name, base[:1])))
    return list(base)


def negative_templates_for(name: str) -> list[str]:
    """DualAdapter's negative templates of dataset ``name`` (a generic one if unknown)."""
    return list(NEGATIVE_TEMPLATES.get(name, DEFAULT_NEGATIVE_TEMPLATES))


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def load_descriptions(path: str | Path, classnames: Sequence[str]) -> dict[str, list[str]]:
    """Read a CuPL-style JSON file (class name -> list of sentences) for ``classnames``.

    Keys match a class name exactly or, failing that, after case folding, ``_`` -> space
    and whitespace collapsing. Returns ``{classname: sentences}`` in ``classnames`` order.
    Raises :class:`DatasetError` naming the classes that have no (or empty) descriptions.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"description file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"description file {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise DatasetError(f"description file {path} must map class names to lists of sentences")
    loose: dict[str, str] = {}
    for key in raw:
        loose.setdefault(_normalise(str(key)), key)
    out: dict[str, list[str]] = {}
    missing: list[str] = []
    for name in classnames:
        key = name if name in raw else loose.get(_normalise(name))
        value = raw.get(key) if key is not None else None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            missing.append(name)
            continue
        out[name] = [str(s) for s in value]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DatasetError(
            f"description file {path} has no descriptions for {len(missing)} of "
            f"{len(classnames)} classes: {shown}{more}"
        )
    return out


#: The 60 ImageNet templates of CLIP's prompt-engineering notebook that PromptSRC averages
#: into its frozen text features (the official ``IMAGENET_TEMPLATES``, in order).
CLIP_IMAGENET_60: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)
