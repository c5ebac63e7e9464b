"""The protocols: fit a method on a few-shot sample and evaluate it, the method-and-metrics
part of a run record (:func:`run_protocol`).

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
generalisation over the same classes, and :func:`check_protocol` refuses the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .backbones import Backbone
from .config import RunConfig
from .data import Dataset, Datum, subsample_classes
from .data.base_new import base_new_classes
from .data.fewshot import FewShotSplit
from .features import FeatureCache
from .fitting import FitResult
from .inputs import build_classifiers, difficulty, feature_data, sample_split, test_features
from .methods import METHODS
from .methods.base import FeatureMethod
from .metrics import (
    accuracy,
    encode_correct,
    encode_labels,
    harmonic_mean,
    labels_digest,
    per_class_accuracy,
)
from .prompting.encoder_base import EncoderMethod, FeaturePromptMethod

#: Images per forward when a text-side prompt method scores cached test features.
EVAL_CHUNK = 64


@dataclass
class Timer:
    """Accumulates wall-clock seconds per named span: ``with timer("fit"): ...``."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def transfers_to_new_classes(method: FeatureMethod | EncoderMethod | type) -> bool:
    """Whether a method (instance or class) can classify classes it was not trained on."""
    cls = method if isinstance(method, type) else type(method)
    if issubclass(cls, EncoderMethod):
        return True
    return cls.logits_for is not FeatureMethod.logits_for


def check_protocol(config: RunConfig, method, source: Dataset, targets: list[Dataset]) -> None:
    """Refuse a protocol that asks a method to classify classes it cannot (one sentence)."""
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
            if list(t.classnames) != list(source.classnames) and "imagenet_indices" not in t.extra
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
    if config.val == "none":
        notes.append(
            "val='none': no validation data was seen; the method ran its fixed setting "
            f"{getattr(method, 'no_val_options', None) or '(its defaults)'}"
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
        "labels": encode_labels(labels),  # per test image: new classes resample by class
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
                "labels": out["labels"],
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
            {
                k: source[k]
                for k in ("per_class_accuracy", "test_images", "correct", "test_labels", "labels")
            }
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
