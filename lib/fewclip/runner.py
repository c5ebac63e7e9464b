"""The run API: one configuration end to end, from data to a record in the results store.

    from fewclip import RunConfig, run
    record = run(RunConfig(method="tip_adapter_f", dataset="emoji_openmoji_subcategory", shots=16))

Data flows one way: dataset -> few-shot sample -> backbone -> feature cache -> method ->
metrics -> record. The inputs (templates, classifiers, the sample, cached features) are
built by :mod:`fewclip.inputs`, the fit and evaluation under ``RunConfig.protocol`` by
:mod:`fewclip.protocols`; this module checks the configuration, keys the run and writes
the record.

A record carries the configuration, accuracy (and per-class accuracy, and each test
image's correctness, ``metrics["correct"]``, for the bootstrap intervals of
:mod:`fewclip.evidence`), the chosen hyper-parameters, the trainable parameter count, fit
and predict times, library versions, which model produced it, and the dataset's
difficulty (zero-shot accuracy, APEX's relative transfer difficulty, class separability of
the test features). With a store, a finished configuration is returned from the store
(``record["skipped"] = True``) unless ``force=True``; the row is written only once the run
has finished.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any

import torch

from . import __version__
from .backbones import Backbone, crop_key, load_backbone, words_key
from .backbones import weights_identity as backbone_identity
from .config import RunConfig
from .data import Dataset, load_dataset
from .features import FeatureCache, files_identity
from .inputs import (  # noqa: F401  (the inputs' names stay importable from here)
    build_classifiers,
    difficulty,
    feature_data,
    load_targets,
    resolve_templates,
    run_items,
    sample_split,
    test_features,
)
from .methods import METHODS, get_method
from .methods.base import FeatureMethod
from .prompting.encoder_base import EncoderMethod
from .protocols import (  # noqa: F401  (the protocols' names stay importable from here)
    EVAL_CHUNK,
    Evaluator,
    Timer,
    check_protocol,
    fit_method,
    run_protocol,
    transfers_to_new_classes,
)
from .results import ResultStore


def library_versions() -> dict[str, str]:
    import numpy
    import open_clip

    return {
        "fewclip": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        # results can differ between CPU instruction sets (float kernels), never between runs
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def weights_identity(config: RunConfig) -> str:
    """The backbone identity without building the model (for the run key): the weights'
    digest and, where it differs from the architecture's, the activation (QuickGELU)."""
    return backbone_identity(config.backbone, config.pretrained)


# --------------------------------------------------------------------------- checks


def make_method(config: RunConfig) -> FeatureMethod | EncoderMethod:
    """The configured method, with run-level facts filled into options it has but that the
    configuration leaves unset: ``dataset`` (official per-dataset settings), ``protocol``
    (official per-protocol settings, e.g. APEX's cross_eval config) and ``progress``."""
    cls = METHODS[config.method]
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    options = dict(config.options)
    if "dataset" in fields and "dataset" not in options:
        options["dataset"] = config.dataset
    if "protocol" in fields and "protocol" not in options:
        options["protocol"] = config.protocol
    if "progress" in fields and "progress" not in options:
        options["progress"] = config.progress
    if config.val == "none":
        options = no_val_options(config.method, options)
    return get_method(config.method, **options)


def no_val_methods() -> list[str]:
    """The methods with a documented fixed setting that needs no validation data."""
    return sorted(n for n, c in METHODS.items() if getattr(c, "no_val_options", None) is not None)


def no_val_options(method: str, options: dict) -> dict:
    """``options`` with the method's fixed, validation-free setting (its class attribute
    ``no_val_options``) filled in, for ``RunConfig(val="none")``. A method without one, or
    an option set against it, is refused in one sentence naming the alternative."""
    fixed = getattr(METHODS[method], "no_val_options", None)
    if fixed is None:
        raise ValueError(
            f"method {method!r} chooses its hyper-parameters or epoch on validation data and "
            "has no fixed setting for val='none'; use val='few_shot' (or 'full'), or a method "
            "with a fixed setting: " + ", ".join(no_val_methods())
        )
    for key, value in fixed.items():
        if key in options and options[key] != value:
            raise ValueError(
                f"method {method!r} with {key}={options[key]!r} selects on validation data; "
                f"val='none' runs it with {key}={value!r} (leave {key} unset)"
            )
    return {**options, **fixed}


def check_config(config: RunConfig) -> FeatureMethod | EncoderMethod:
    """The checks a run makes before any work (method name, shots, every option's type and
    range); returns the configured method. Raises ValueError with one sentence."""
    if config.method not in METHODS:
        raise ValueError(
            f"unknown method {config.method!r}; choose one of: {', '.join(sorted(METHODS))}"
        )
    check_shots(config)
    return make_method(config)


def check_shots(config: RunConfig) -> None:
    """Refuse ``shots=0`` for a method that learns from training images: it would get none
    and its row would hold zero-shot CLIP's number under its own name."""
    if config.shots == 0 and getattr(METHODS[config.method], "uses_training_images", True):
        raise ValueError(
            f"method {config.method!r} learns from few-shot training images and shots=0 gives "
            "it none; use shots >= 1, or method='zero_shot' for zero-shot CLIP"
        )


# --------------------------------------------------------------------------- the run


_BACKBONES: dict[tuple, Backbone] = {}


def cached_backbone(config: RunConfig) -> Backbone:
    """The run's backbone, reused across runs in one process (sweeps, notebooks): models
    are frozen and no method changes them. The last two are kept."""
    key = (config.backbone, str(config.pretrained), config.device, weights_identity(config))
    if key not in _BACKBONES:
        while len(_BACKBONES) >= 2:
            _BACKBONES.pop(next(iter(_BACKBONES)))
        _BACKBONES[key] = load_backbone(config.backbone, config.pretrained, device=config.device)
    return _BACKBONES[key]


@dataclass
class FittedRun:
    """What :func:`fit_run` returns: the record plus the fitted objects, for diagnostics
    (attention maps, gates, ensemble weights, predictions on chosen images)."""

    record: dict[str, Any]
    method: FeatureMethod | EncoderMethod
    backbone: Backbone
    dataset: Dataset
    cache: FeatureCache


def run(config: RunConfig, store: ResultStore | None = None, force: bool = False) -> dict[str, Any]:
    """Run one configuration (or return its stored record); see the module docstring."""
    return _run(config, store, force).record


def fit_run(config: RunConfig) -> FittedRun:
    """Run one configuration without the store and keep the fitted method (see FittedRun)."""
    return _run(config, None, True)


def run_key(config: RunConfig) -> str:
    """The run's key in the results store, without running it (reads the dataset's listing
    and the image files' sizes and times, not the images): what a sweep's driver claims."""
    return _inputs(config)[4]


def _inputs(config: RunConfig) -> tuple[Any, Dataset, list[Dataset], str, str]:
    """The checked method, the dataset, the targets, the data fingerprint and the run key."""
    method = check_config(config)
    dataset = load_dataset(config.dataset, config.data_root, **config.reader_options)
    targets = load_targets(config)
    check_protocol(config, method, dataset, targets)
    identity = weights_identity(config)
    if getattr(method, "uses_backbone_words", False):  # a phrase from the backbone's config
        identity += words_key(config.backbone, config.pretrained)
    if getattr(method, "uses_backbone_crop", False):  # a crop from the backbone's config
        identity += crop_key(config.backbone, config.pretrained)
    fingerprint = "+".join([dataset.fingerprint()] + [t.fingerprint() for t in targets])
    # the image files' identity (size + mtime) too: a repaired or damaged file is a new run
    files = files_identity(run_items(config, dataset, targets))
    # options as the method reads them (alpha=1 and alpha=1.0 are one run, one key)
    checked = {k: getattr(method.options, k, v) for k, v in config.options.items()}
    key = config.replace(options=checked).run_key(identity, f"{fingerprint}|files:{files}")
    return method, dataset, targets, fingerprint, key


def _run(config: RunConfig, store: ResultStore | None, force: bool) -> FittedRun:
    method, dataset, targets, fingerprint, key = _inputs(config)
    cache = FeatureCache(config.cache_dir or None)

    def compute() -> FittedRun:
        """Compute the run, write its row (or return the row another process wrote first)."""
        backbone = cached_backbone(config)
        result = run_protocol(config, method, backbone, dataset, targets, cache)
        result["metrics"]["data_fingerprint"] = fingerprint
        record = {
            "run_key": key,
            "method": config.method,
            "variant": config.variant,
            "dataset": config.dataset,
            "protocol": config.protocol,
            "backbone": config.backbone,
            "pretrained": str(config.pretrained),
            "model_label": backbone.label,
            "shots": config.shots,
            "seed": config.seed,
            "selection": config.selection,
            "config": config.to_dict(),
            "versions": library_versions(),
            "backbone_info": backbone.describe(),
            **result,
        }
        record["fit_seconds"] = record["timings"].get("fit")
        record["predict_seconds"] = record["timings"].get("predict")
        if store is not None and not store.add(record, replace=force):
            stored = store.get(key)  # written by another process meanwhile: one row per run
            if stored is not None:
                stored["skipped"] = True
                return FittedRun(stored, method, backbone, dataset, cache)
        record["skipped"] = False
        return FittedRun(record, method, backbone, dataset, cache)

    if store is not None and not force:
        stored = store.get(key)
        if stored is None:  # claim it, so that another process does not compute it too
            with store.claim(key) as claim:
                if claim.record is None:
                    return compute()
                stored = claim.record  # another process finished it meanwhile
        stored["skipped"] = True
        return FittedRun(stored, method, None, dataset, cache)  # type: ignore[arg-type]
    return compute()
