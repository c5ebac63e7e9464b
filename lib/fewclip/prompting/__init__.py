"""Prompt learning on frozen open_clip encoders: the building blocks of the encoder-level
methods (CoOp, CoCoOp, APEX, TOMM in :mod:`fewclip.methods`).

- :mod:`.text_prompts`: learnable context vectors through the frozen text transformer.
- :mod:`.deep_prompts`: deep visual and text prompts, MaPLe's coupling function.
- :mod:`.encoder_base`: the ``EncoderMethod`` interface, cached image features.
- :mod:`.training`: Dassl's optimisers and per-epoch schedule, the training loop.
- :mod:`.toy`: a synthetic coloured-squares task for tests and benchmarks.
"""

from .deep_prompts import DeepVisualPrompts, VisualPromptError, encode_image
from .encoder_base import (
    CachedImages,
    EncoderMethod,
    FeaturePromptMethod,
    cache_images,
    encode_items,
)
from .text_prompts import ClassPrompts, TextPromptLearner, TextTower

__all__ = [
    "CachedImages",
    "ClassPrompts",
    "DeepVisualPrompts",
    "EncoderMethod",
    "FeaturePromptMethod",
    "TextPromptLearner",
    "TextTower",
    "VisualPromptError",
    "cache_images",
    "encode_image",
    "encode_items",
]
