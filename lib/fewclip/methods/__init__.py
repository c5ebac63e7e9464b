"""Methods, registered by name (``get_method("dual_adapter", ...)``).

Feature-level (fit on cached features, :class:`~fewclip.methods.base.FeatureMethod`):
``zero_shot``, ``linear_probe``, ``clip_adapter``, ``tip_adapter``, ``tip_adapter_f``,
``dual_adapter``. Encoder-level (learn inputs of the frozen encoders,
:class:`~fewclip.prompting.encoder_base.EncoderMethod`): ``coop``, ``cocoop``, ``apex``,
``tomm``, ``kgcoop``, ``prograd``, ``proda``, ``maple``, ``promptsrc``, ``clip_lora``.
Importing this package registers them all.
"""

from . import (  # noqa: F401  (register the methods)
    ape,
    ape_t,
    apex,
    clap,
    clip_adapter,
    clip_lora,
    cocoop,
    coop,
    dual_adapter,
    gda,
    kgcoop,
    linear_probe,
    lp_pp,
    maple,
    proda,
    prograd,
    promptsrc,
    taskres,
    tip_adapter,
    tomm,
    zero_shot,
)
from .base import METHODS, FeatureData, FeatureMethod, FitResult, get_method, register_method

FEATURE_METHODS = tuple(n for n, c in METHODS.items() if issubclass(c, FeatureMethod))
ENCODER_METHODS = tuple(n for n in METHODS if n not in FEATURE_METHODS)

__all__ = [
    "ENCODER_METHODS",
    "FEATURE_METHODS",
    "METHODS",
    "FeatureData",
    "FeatureMethod",
    "FitResult",
    "get_method",
    "register_method",
]
