"""Pretraining of fewclip's tiny CLIP models on the emoji corpus (``python -m fewclip.pretrain``).

The committed checkpoints in ``fewclip/weights`` were made with this package; the
defaults below reproduce them (the exact commands are in the README and in each
checkpoint's ``*.config.json``).
"""

from .train import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
