"""fewclip: efficient transfer learning of CLIP-like models, one protocol for four papers.

    from fewclip import RunConfig, run, ResultStore
    record = run(RunConfig(method="dual_adapter", dataset="emoji_openmoji_subcategory"))

The names below are imported on first use, so ``import fewclip`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "RunConfig": "fewclip.config",
    "run": "fewclip.runner",
    "ResultStore": "fewclip.results",
    "load_backbone": "fewclip.backbones",
    "load_dataset": "fewclip.data",
    "get_method": "fewclip.methods",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name == "load_dataset":
            importlib.import_module("fewclip.offline")  # registers the offline tasks
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewclip' has no attribute {name!r}")
