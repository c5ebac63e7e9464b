"""Deep visual prompts: kept importable here; they live in :mod:`.deep_prompts` beside the
deep text prompts and MaPLe's coupling function."""

from .deep_prompts import DeepVisualPrompts, VisualPromptError, check_vit, encode_image

__all__ = ["DeepVisualPrompts", "VisualPromptError", "check_vit", "encode_image"]
