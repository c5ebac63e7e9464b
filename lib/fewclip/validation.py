"""Type and range checks of configuration values against a dataclass's annotations.

Used by :class:`fewclip.config.RunConfig` (its fields, on construction) and by the method
registry (every method's ``Options``, before any work), so that ``shots="4"``,
``seed=1.0``, ``--option alpha=true`` or ``epochs=2.5`` fail at once with one sentence
naming the field and the expected type, instead of a cryptic error after feature
extraction or a silently different run.

Accepted: an int for a float field (converted), a list for a tuple field (converted), an
``os.PathLike`` for a str field (converted), numpy scalars of the right kind. Refused: a
bool where a number is expected, a float for an int field (``1.0`` is not the seed
``1``), a string for a number, and the wrong length for a fixed-length tuple.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from typing import Any

#: Ranges of option names shared by several methods: name -> (minimum, inclusive).
OPTION_MINIMA: dict[str, tuple[float, bool]] = {
    "epochs": (0, True),
    "batch_size": (1, True),
    "lr": (0, False),
    "weight_decay": (0, True),
    "warmup_epochs": (0, True),
    "reduction": (1, True),
    "meta_reduction": (1, True),
    "ctp_reduction": (1, True),
    "tft_reduction": (1, True),
    "n_ctx": (1, True),
    "text_n_ctx": (1, True),
    "vision_length": (1, True),
    "views": (1, True),
    "eval_chunk": (1, True),
    "max_iter": (1, True),
    "refine_steps": (0, True),
    "arl_k": (1, True),
    "c_reg": (0, False),
}

#: Closed intervals a method documents for one of its options: method -> {name: (low, high)}.
#: CLIP-Adapter's residual ratios mix the adapted and the original feature (Eq. 2-3 and
#: 5-6 of its paper: ``alpha * A(f) + (1 - alpha) * f``), so only [0, 1] is that equation;
#: dropout is a probability. A method may also declare ``ranges`` on its ``Options`` class
#: (a class attribute, not a field), read the same way.
OPTION_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "clip_adapter": {"alpha": (0.0, 1.0), "beta": (0.0, 1.0)},
    "clip_lora": {"dropout": (0.0, 1.0)},
}
#: Intervals shared by every method that has the option: name -> (low, high).
SHARED_RANGES: dict[str, tuple[float, float]] = {"momentum": (0.0, 1.0)}


def option_ranges(method: str, options_cls: type) -> dict[str, tuple[float, float]]:
    """The documented closed intervals of ``method``'s options (:data:`SHARED_RANGES`,
    :data:`OPTION_RANGES`, then the ``Options.ranges`` class attribute, later ones winning)."""
    fields = {f.name for f in dataclasses.fields(options_cls)}
    ranges = {k: v for k, v in SHARED_RANGES.items() if k in fields}
    ranges.update(OPTION_RANGES.get(method, {}))
    ranges.update(getattr(options_cls, "ranges", None) or {})
    return ranges


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to a mistyped ``name``, or
    ``""`` when none is close (:func:`difflib.get_close_matches`, cutoff 0.6)."""
    import difflib

    close = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Mismatch(Exception):
    pass


def describe(hint: Any) -> str:
    """A readable name of a type annotation: ``int``, ``float or None``, ``list of str``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if origin is list:
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(args[0], describe(args[0])) if args else 'values'}"
    if origin is dict:
        return "a dict"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _convert(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise _Mismatch
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if type(value).__name__ == "bool_":
                raise _Mismatch
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if type(value).__name__ == "bool_":
                raise _Mismatch
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is list:
            item = args[0] if args else Any
            return [_convert(v, item) for v in value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation this checker does not know: left alone


def check_value(owner: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (see the module), or ValueError naming ``name``."""
    try:
        return _convert(value, hint)
    except _Mismatch:
        raise ValueError(
            f"{owner}: {name} must be {describe(hint)}, got {value!r} ({type(value).__name__})"
        ) from None


def check_fields(owner: str, cls: type, values: dict[str, Any], what: str = "") -> dict[str, Any]:
    """Every ``values[name]`` checked against the annotation of dataclass ``cls``'s field
    ``name``; returns the converted values. ``what`` prefixes the name ("option ")."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for name, value in values.items():
        if name not in fields:
            out[name] = value
            continue
        out[name] = check_value(owner, f"{what}{name}", value, hints.get(name, Any))
    return out


def check_options(method: str, options_cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """A method's options checked against its ``Options`` types and the shared ranges
    (:data:`OPTION_MINIMA`, and ``(lo, hi, n)`` search ranges with ``lo <= hi``, ``n >= 1``)
    and the method's documented intervals (:func:`option_ranges`)."""
    out = check_fields(method, options_cls, options, what="option ")
    ranges = option_ranges(method, options_cls)
    for name, value in out.items():
        if value is None:
            continue
        if name in OPTION_MINIMA and isinstance(value, (int, float)):
            low, inclusive = OPTION_MINIMA[name]
            if value < low or (value == low and not inclusive):
                bound = f">= {low}" if inclusive else f"> {low}"
                raise ValueError(f"{method}: option {name} must be {bound}, got {value!r}")
        if name in ranges and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = ranges[name]
            if not low <= value <= high:
                raise ValueError(
                    f"{method}: option {name} must be in [{low:g}, {high:g}], got {value!r}"
                )
        if name.endswith("_range") and isinstance(value, tuple) and len(value) == 3:
            lo, hi, n = value
            if not (lo <= hi and n >= 1):
                raise ValueError(
                    f"{method}: option {name} must be (low, high, count) with low <= high and "
                    f"count >= 1, got {list(value)}"
                )
    return out
