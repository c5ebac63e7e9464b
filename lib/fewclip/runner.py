"""The run API: one configuration end to end, from data to a record in the results store.

    from fewclip import RunConfig, run
    record = run(RunConfig(method="tip_adapter_f", dataset="emoji_openmoji_subcategory", shots=16))

Data flows one way: dataset -> few-shot sample -> backbone -> feature cache -> method ->
metrics -> record. A record carries the configuration, accuracy (and per-class accuracy,
and each test image's correctness, ``metrics["correct"]``, for the bootstrap intervals of
:mod:`fewclip.evidence`),
the chosen hyper-parameters, the trainable parameter count, fit and predict times, library
versions, which model produced it, and the dataset's difficulty (zero-shot accuracy, APEX's
relative transfer difficulty, class separability of the test features). With a store, a
finished configuration is returned from the store (``record["skipped"] = True``) unless
``force=True``; the row is written only once the run has finished.

Protocols (``RunConfig.protocol``):

- ``few_shot``: K shots per class from train, min(K, 4) from val; test on all classes.
- ``base_to_new``: CoOp's split (sorted labels, first ceil(C/2) are base). The K-shot
  sample is drawn over all classes, then the base classes are kept (as CoOp does); the
  method trains on base classes and is tested on the base test images over the base class
  names and on the new test images over the new class names. ``accuracy`` is the harmonic
  mean; ``base_accuracy`` and ``new_accuracy`` are stored beside it.
- ``cross_dataset`` / ``domain_generalisation``: train on ``dataset``, then test on every
  dataset in ``eval_datasets`` (their test splits, over their own class names; for
  ImageNet-A/-R, the 200-class subset of the ImageNet logits). ``accuracy`` is the source
  test accuracy; ``metrics["transfer"]`` holds the accuracy per target dataset.

Methods that learn per-class parameters (linear probe, Tip-Adapter, DualAdapter) cannot
classify classes they never saw: they run under ``few_shot`` and under domain
generalisation over the same classes, and raise a clear error otherwise.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__
from . import offline as _offline  # noqa: F401  (registers the offline task readers)
from .backbones import Backbone, load_backbone
from .backbones import weights_identity as backbone_identity
from .config import RunConfig
from .data import Dataset, Datum, load_dataset, subsample_classes
from .data.base_new import base_new_classes
from .data.fewshot import FewShotSplit, few_shot_split
from .data.templates import SINGLE_TEMPLATES, TEMPLATE_STYLES, templates_for
from .features import (
    FeatureCache,
    augmented_features,
    files_identity,
    image_features,
    prompt_classifier,
    template_classifier,
)
from .images import CACHE_CROP_SCALE
from .methods import METHODS, get_method
from .methods.base import FeatureData, FeatureMethod, FitResult
from .metrics import (
    accuracy,
    class_separability,
    encode_correct,
    harmonic_mean,
    labels_digest,
    per_class_accuracy,
    relative_transfer_difficulty,
)
from .prompting.encoder_base import EncoderMethod, FeaturePromptMethod
from .results import ResultStore

#: Images per forward when a text-side prompt method scores cached test features.
EVAL_CHUNK = 64


def library_versions() -> dict[str, str]:
    import numpy
    import open_clip

    return {
        "fewclip": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def weights_identity(config: RunConfig) -> str:
    """The backbone identity without building the model (for the run key): the weights'
    digest and, where it differs from the architecture's, the activation (QuickGELU)."""
    return backbone_identity(config.backbone, config.pretrained)


@dataclass
class Timer:
    """Accumulates wall-clock seconds per named span: ``with timer("fit"): ...``."""

    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Span()


# --------------------------------------------------------------------------- inputs


def resolve_templates(config: RunConfig, dataset: Dataset) -> list[str]:
    """The positive templates of a run: the dataset's, a style name, or an explicit list.

    ``config.templates`` None: the method's default (:attr:`FeatureMethod.default_templates`:
    ``"single"`` for CLIP-Adapter, whose released code uses CoOp's one hand-written prompt
    per dataset; ``"default"`` for the others); ``"default"``: the dataset's own (an
    ensemble where it has one); ``"single"``: CoOp's single hand-made template; ``"apex"``:
    APEX's; a list: as is.
    """
    t = config.templates
    if t is None:
        t = getattr(METHODS.get(config.method), "default_templates", "default")
    if t == "default":
        return list(dataset.templates)
    if isinstance(t, str):
        if t not in TEMPLATE_STYLES:
            raise ValueError(
                f"templates={t!r}: give a list of templates or one of {TEMPLATE_STYLES}"
            )
        if t == "single" and dataset.name not in SINGLE_TEMPLATES:
            return list(dataset.templates[:1])
        if dataset.name in SINGLE_TEMPLATES:
            return templates_for(dataset.name, t)
        return list(dataset.templates[:1])
    return list(t)


def build_classifiers(
    backbone: Backbone, dataset: Dataset, config: RunConfig, cache: FeatureCache
) -> dict[str, torch.Tensor]:
    """Positive (templates), negative (DualAdapter templates) and description classifiers."""
    templates = resolve_templates(config, dataset)
    classifiers = {"positive": template_classifier(backbone, dataset.classnames, templates, cache)}
    if dataset.negative_templates:
        classifiers["negative"] = template_classifier(
            backbone, dataset.classnames, dataset.negative_templates, cache
        )
    if config.descriptions:
        from .data.templates import load_descriptions

        descriptions = load_descriptions(config.descriptions, dataset.classnames)
        prompts = [descriptions[c] for c in dataset.classnames]
        classifiers["description"] = prompt_classifier(backbone, prompts, cache)
    return classifiers


def sample_split(dataset: Dataset, config: RunConfig, label_noise: bool = True) -> FewShotSplit:
    """The run's K-shot sample (cached under ``config.cache_dir``), with ``config.val``'s
    val split and ``config.label_noise`` on the train labels (``label_noise=False``: clean)."""
    return few_shot_split(
        dataset,
        config.shots,
        config.seed,
        cache_dir=config.cache_dir,
        allow_fewer=config.allow_fewer,
        val=config.val,
        label_noise=config.label_noise if label_noise else 0.0,
    )


def test_features(
    backbone: Backbone, items: Sequence[Datum], config: RunConfig, cache: FeatureCache, desc: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features (N, d), labels (N,)) of the readable test images, and the unreadable count."""
    out = image_features(
        backbone,
        items,
        cache,
        desc=desc,
        num_workers=config.num_workers,
        progress=config.progress,
    )
    f, y = out.dropped()
    return f.to(backbone.device), y.to(backbone.device), out.num_unreadable


def feature_data(
    backbone: Backbone,
    dataset: Dataset,
    split: FewShotSplit,
    config: RunConfig,
    cache: FeatureCache,
    use_training: bool = True,
    view_scale: tuple[float, float] = CACHE_CROP_SCALE,
) -> tuple[FeatureData, int]:
    """FeatureData of a few-shot split (features on the backbone's device), and the number
    of unreadable images dropped from it. ``view_scale``: the crop scale range of the
    augmented views (the method's :meth:`FeatureMethod.view_scale`)."""
    kw = {"num_workers": config.num_workers, "progress": config.progress}
    device = backbone.device
    classifiers = build_classifiers(backbone, dataset, config, cache)
    train_items = split.train if use_training else []
    val_items = split.val if use_training else []
    # features do not depend on labels: under label noise, encode (and cache) the clean
    # items, so every noise level shares one set of features, then use the noisy labels
    labels = torch.tensor([d.label for d in train_items], dtype=torch.long)
    if split.clean_train is not None and use_training:
        train_items = split.clean_train
    train = image_features(backbone, train_items, cache, desc="few-shot train", **kw)
    views = augmented_features(
        backbone,
        train_items,
        cache,
        views=config.augment_views,
        seed=config.seed,
        scale=view_scale,
        **kw,
    )
    val = image_features(backbone, val_items, cache, desc="few-shot val", **kw)
    keep = train.valid & views.valid
    val_f, val_y = val.dropped()
    data = FeatureData(
        train_features=train.features[keep].to(device),
        train_labels=labels[keep].to(device),
        train_views=views.features[:, keep].to(device),
        val_features=val_f.to(device),
        val_labels=val_y.to(device),
        classifiers={k: v.to(device) for k, v in classifiers.items()},
        logit_scale=backbone.logit_scale,
        train_view_norms=views.norms[:, keep].to(device),
        shots=config.shots if config.shots > 0 else None,
    )
    return data, int((~keep).sum()) + val.num_unreadable


def difficulty(
    backbone: Backbone, dataset: Dataset, config: RunConfig, cache: FeatureCache
) -> dict[str, Any]:
    """APEX's difficulty measures of a dataset for this backbone (from cached features):
    zero-shot test accuracy with the run's templates, RTD = (1/C) / acc, and the class
    separability of the test image features (see :func:`fewclip.metrics.class_separability`)."""
    f, y, _ = test_features(backbone, dataset.test, config, cache, "test")
    w = build_classifiers(backbone, dataset, config, cache)["positive"].to(f.device)
    acc = accuracy(backbone.logit_scale * f @ w, y)
    out: dict[str, Any] = {
        "num_classes": dataset.num_classes,
        "zero_shot_accuracy": acc,
        "rtd": relative_transfer_difficulty(dataset.num_classes, acc),
    }
    try:
        out["separability"] = class_separability(f, y)
    except ValueError:
        out["separability"] = None
    return out


# --------------------------------------------------------------------------- methods


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
    return get_method(config.method, **options)


def run_items(config: RunConfig, dataset: Dataset, targets: list[Dataset]) -> list[Datum]:
    """The images a run reads: its few-shot sample, the test split, the targets' tests."""
    split = sample_split(dataset, config) if config.shots > 0 else None
    items = list(dataset.test) + ([*split.train, *split.val] if split else [])
    for t in targets:
        items += list(t.test)
    return items


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


def transfers_to_new_classes(method: FeatureMethod | EncoderMethod | type) -> bool:
    """Whether a method (instance or class) can classify classes it was not trained on."""
    cls = method if isinstance(method, type) else type(method)
    if issubclass(cls, EncoderMethod):
        return True
    return cls.logits_for is not FeatureMethod.logits_for


def _same_classes(source: Dataset, target: Dataset) -> bool:
    return list(source.classnames) == list(target.classnames)


def _check_protocol(config: RunConfig, method, source: Dataset, targets: list[Dataset]) -> None:
    if config.protocol == "few_shot":
        return
    if transfers_to_new_classes(method):
        return
    if config.protocol == "base_to_new":
        bad = "new classes"
    else:
        bad_targets = [
            t.name
            for t in targets
            if not _same_classes(source, t) and "imagenet_indices" not in t.extra
        ]
        if not bad_targets:
            return
        bad = f"the classes of {', '.join(bad_targets)}"
    raise ValueError(
        f"method {config.method!r} learns per-class parameters and cannot classify {bad} "
        f"(protocol {config.protocol!r}); methods that can: "
        + ", ".join(n for n in sorted(METHODS) if transfers_to_new_classes(METHODS[n]))
    )


class Evaluator:
    """Scores test items for a fitted method, over a given class list.

    Feature methods score cached test features; text-side prompt methods (CoOp, CoCoOp,
    TOMM without patch tokens) score cached frozen features through ``feature_logits``;
    the others (APEX, token-attending TOMM) encode the images themselves.
    """

    def __init__(self, method, backbone: Backbone, config: RunConfig, cache: FeatureCache):
        self.method, self.backbone, self.config, self.cache = method, backbone, config, cache
        self.unreadable = 0

    def classifier(self, dataset: Dataset) -> torch.Tensor:
        classifiers = build_classifiers(self.backbone, dataset, self.config, self.cache)
        return classifiers["positive"].to(self.backbone.device)

    @torch.no_grad()
    def logits(
        self, dataset: Dataset, items: Sequence[Datum], train_names: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C_dataset), labels (N,)) of ``items`` over ``dataset``'s classes.

        ``train_names``: the training class names; for a target dataset with the same names
        (or an ImageNet subset given by ``imagenet_indices``) the trained head is used as is.
        """
        m, bb = self.method, self.backbone
        names = list(dataset.classnames)
        if isinstance(m, EncoderMethod) and not self._uses_cached_features(m):
            logits, labels = m.evaluate(bb, items, names, num_workers=self.config.num_workers)
            self.unreadable += len(items) - int(labels.numel())
            return logits, labels
        f, y, bad = test_features(bb, items, self.config, self.cache, f"test {dataset.name}")
        self.unreadable += bad
        if isinstance(m, EncoderMethod):
            with bb.autocast():
                chunks = [m.feature_logits(c, names).float() for c in f.split(EVAL_CHUNK)]
            return torch.cat(chunks), y
        if train_names is None or list(train_names) == names:
            return m.logits(f), y
        indices = dataset.extra.get("imagenet_indices")
        if indices is not None and len(train_names) == 1000:
            return m.logits(f)[:, torch.as_tensor(indices, device=f.device)], y
        return m.logits_for(f, self.classifier(dataset)), y

    @staticmethod
    def _uses_cached_features(method: EncoderMethod) -> bool:
        return isinstance(method, FeaturePromptMethod) and not method.needs_tokens


def fit_method(
    method,
    backbone: Backbone,
    dataset: Dataset,
    split: FewShotSplit,
    config: RunConfig,
    cache: FeatureCache,
    timer: Timer,
) -> tuple[FitResult, list[str], int]:
    """Fit on a few-shot split; returns (fit result, notes, unreadable images dropped)."""
    notes: list[str] = []
    if config.selection == "test":
        notes.append(
            "selection='test': epochs and hyper-parameters chosen on the TEST set, as the "
            "official Tip-Adapter code does (not leak-free)"
        )
    if isinstance(method, FeatureMethod):
        with timer("features"):
            data, unreadable = feature_data(
                backbone,
                dataset,
                split,
                config,
                cache,
                method.uses_training_images,
                view_scale=method.view_scale(),
            )
            if config.selection == "test":
                data.val_features, data.val_labels, _ = test_features(
                    backbone, dataset.test, config, cache, "test"
                )
        torch.manual_seed(config.seed)
        with timer("fit"):
            fit = method.fit(data, seed=config.seed)
        fit.train_images = int(data.train_features.shape[0])  # the readable ones it used
        return fit, data.notes + notes, unreadable
    val_items = dataset.test if config.selection == "test" else split.val
    torch.manual_seed(config.seed)
    with timer("fit"):
        fit = method.fit(
            backbone,
            split.train,
            val_items,
            dataset.classnames,
            seed=config.seed,
            progress=config.progress,
            num_workers=config.num_workers,
        )
    return fit, notes, 0


def _evaluate(evaluator: Evaluator, dataset: Dataset, train_names=None) -> dict[str, Any]:
    logits, labels = evaluator.logits(dataset, dataset.test, train_names)
    out = {
        "accuracy": accuracy(logits, labels),
        "per_class_accuracy": per_class_accuracy(logits, labels, dataset.num_classes).tolist(),
        "test_images": int(labels.numel()),
        "correct": encode_correct(logits, labels),  # per test image, for fewclip.evidence
        "test_labels": labels_digest(labels),
    }
    # inference-time variants of the same fitted model (APEX's ensemble settings)
    variants = getattr(evaluator.method, "last_variants", None)
    if variants:
        digest = out["test_labels"]
        out["variants"] = {
            name: {
                "accuracy": accuracy(v, labels),
                "correct": encode_correct(v, labels),
                "test_labels": digest,
            }
            for name, v in variants.items()
        }
        evaluator.method.last_variants = None
    return out


def run_protocol(
    config: RunConfig,
    method,
    backbone: Backbone,
    dataset: Dataset,
    targets: list[Dataset],
    cache: FeatureCache,
) -> dict[str, Any]:
    """Fit and evaluate under ``config.protocol``; the method-and-metrics part of a record."""
    timer = Timer()
    evaluator = Evaluator(method, backbone, config, cache)
    out: dict[str, Any] = {"metrics": {}}
    if config.protocol == "base_to_new":
        base_labels, new_labels = base_new_classes(dataset)
        base, new = subsample_classes(dataset, "base"), subsample_classes(dataset, "new")
        with timer("features"):
            split = sample_split(dataset, config, label_noise=False).subsample(base_labels)
            split = split.with_label_noise(config.label_noise, base.classnames)
        fit, notes, unreadable = fit_method(method, backbone, base, split, config, cache, timer)
        with timer("predict"):
            on_base = _evaluate(evaluator, base)
            on_new = _evaluate(evaluator, new, train_names=base.classnames)
        b, n = on_base["accuracy"], on_new["accuracy"]
        out.update(base_accuracy=b, new_accuracy=n, hm=harmonic_mean(b, n))
        out["accuracy"] = out["hm"]
        out["metrics"].update(
            base=on_base, new=on_new, base_classes=base_labels, new_classes=new_labels
        )
        notes.append("base_to_new: accuracy is the harmonic mean of base and new accuracy")
    else:
        with timer("features"):
            split = sample_split(dataset, config)
        fit, notes, unreadable = fit_method(method, backbone, dataset, split, config, cache, timer)
        with timer("predict"):
            source = _evaluate(evaluator, dataset)
            transfer = {
                t.name: _evaluate(evaluator, t, train_names=dataset.classnames) for t in targets
            }
        out["accuracy"] = source["accuracy"]
        out["metrics"].update(
            {k: source[k] for k in ("per_class_accuracy", "test_images", "correct", "test_labels")}
        )
        if targets:
            out["metrics"]["transfer"] = {k: v["accuracy"] for k, v in transfer.items()}
            out["metrics"]["transfer_detail"] = transfer
    with timer("difficulty"):
        out["metrics"]["difficulty"] = difficulty(backbone, dataset, config, cache)
    out["metrics"]["best_val_accuracy"] = fit.best_val_acc
    used = getattr(fit, "train_images", None)
    out["metrics"]["train_images"] = len(split.train) if used is None else used
    out["metrics"]["val_images"] = len(split.val)
    out["metrics"]["flipped_labels"] = split.flipped
    out["chosen"] = {
        **fit.chosen,
        **({"best_epoch": fit.best_epoch} if fit.best_epoch is not None else {}),
    }
    out["options"] = method.options_dict()
    out["history"] = fit.history
    out["notes"] = notes + fit.notes
    out["trainable_params"] = method.trainable_parameters()
    out["timings"] = timer.seconds
    out["unreadable_images"] = unreadable + evaluator.unreadable
    return out


def load_targets(config: RunConfig) -> list[Dataset]:
    """The evaluation datasets of cross-dataset / domain-generalisation runs."""
    if config.protocol in ("few_shot", "base_to_new"):
        if config.eval_datasets:
            raise ValueError(
                f"eval_datasets is for cross_dataset / domain_generalisation runs, not "
                f"protocol {config.protocol!r}"
            )
        return []
    if not config.eval_datasets:
        raise ValueError(f"protocol {config.protocol!r} needs eval_datasets (target datasets)")
    return [load_dataset(name, config.data_root) for name in config.eval_datasets]


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


def _run(config: RunConfig, store: ResultStore | None, force: bool) -> FittedRun:
    method = check_config(config)
    dataset = load_dataset(config.dataset, config.data_root, **config.reader_options)
    targets = load_targets(config)
    _check_protocol(config, method, dataset, targets)
    identity = weights_identity(config)
    fingerprint = "+".join([dataset.fingerprint()] + [t.fingerprint() for t in targets])
    # the image files' identity (size + mtime) too: a repaired or damaged file is a new run
    files = files_identity(run_items(config, dataset, targets))
    # options as the method reads them (alpha=1 and alpha=1.0 are one run, one key)
    checked = {k: getattr(method.options, k, v) for k, v in config.options.items()}
    key = config.replace(options=checked).run_key(identity, f"{fingerprint}|files:{files}")
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
