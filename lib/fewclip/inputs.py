"""The inputs of a run: its templates and text classifiers, few-shot sample, cached
features, target datasets and the dataset's difficulty.

Everything here is read from the dataset and the backbone through the feature cache
(:mod:`fewclip.features`); nothing is fitted. :mod:`fewclip.protocols` fits and evaluates
on these inputs, :mod:`fewclip.runner` runs a configuration end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import offline as _offline  # noqa: F401  (registers the offline task readers)
from .backbones import Backbone
from .config import RunConfig
from .data import Dataset, Datum, load_dataset
from .data.fewshot import FewShotSplit, few_shot_split
from .data.templates import SINGLE_TEMPLATES, TEMPLATE_STYLES, templates_for
from .features import (
    FeatureCache,
    augmented_features,
    image_features,
    prompt_classifier,
    template_classifier,
)
from .images import CACHE_CROP_SCALE
from .methods import METHODS
from .methods.base import FeatureData
from .metrics import accuracy, class_separability, relative_transfer_difficulty


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


def run_items(config: RunConfig, dataset: Dataset, targets: list[Dataset]) -> list[Datum]:
    """The images a run reads: its few-shot sample, the test split, the targets' tests."""
    split = sample_split(dataset, config) if config.shots > 0 else None
    items = list(dataset.test) + ([*split.train, *split.val] if split else [])
    for t in targets:
        items += list(t.test)
    return items


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
