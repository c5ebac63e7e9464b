"""What both method families share: the fit result, the registry of methods by name and
the check of a method's options.

Feature-level methods (:mod:`fewclip.methods`) and encoder-level methods (built on
:mod:`fewclip.prompting`) both return a :class:`FitResult` from ``fit``, register
themselves with :func:`register_method` and check their options with
:func:`check_method_options`. This module sits below both families, so neither imports
the other for them.

    @register_method
    class MyMethod(FeatureMethod): ...

    method = get_method("my_method", alpha=1.0)   # options checked before any work
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .validation import check_options, did_you_mean


@dataclass
class FitResult:
    """What ``fit`` reports: chosen hyper-parameters, the selected epoch, the training curve."""

    chosen: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: training images actually used (readable ones; 0 for a method that uses none), set by
    #: the run layer for feature methods; None: the sample's size
    train_images: int | None = None


def check_method_options(name: str, options_cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked for method ``name``: every key a field of the ``options_cls``
    dataclass (else one sentence listing the valid ones), each value against its annotation
    and the shared ranges (:func:`fewclip.validation.check_options`). Returns the options,
    converted (an int for a float field becomes a float)."""
    fields = {f.name for f in dataclasses.fields(options_cls)}
    unknown = set(options) - fields
    if unknown:
        hint = did_you_mean(sorted(unknown)[0], fields) if len(unknown) == 1 else ""
        raise ValueError(
            f"{name}: unknown option(s) {sorted(unknown)}{hint}; valid: {sorted(fields)}"
        )
    return check_options(name, options_cls, options)


#: name -> method class, filled by :func:`register_method` (importing
#: :mod:`fewclip.methods` registers every method of the project).
METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options: Any):
    """Instantiate a registered method by name with its options, each checked against the
    method's ``Options`` type and range first (:func:`fewclip.validation.check_options`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    return cls(**check_options(name, cls.Options, options))
