"""Synthetic cached features with a known class structure, for method tests.

Each class c has a mean direction mu_c (random unit vector). Image features are
norm(mu_c + noise); the text classifier column is norm(mu_c + text_noise) with a large
text noise, so zero-shot is mediocre while anything that learns from the few shots can do
much better. All draws come from one seeded generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewclip.methods.base import FeatureData


def class_means(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1)


def sample_features(
    means: torch.Tensor, per_class: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C * per_class, d) normalised features around the class means, and their labels."""
    num_classes, dim = means.shape
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = means[labels] + noise * torch.randn(len(labels), dim, generator=generator) / dim**0.5
    return F.normalize(feats, dim=-1), labels


def make_feature_data(
    num_classes: int = 10,
    shots: int = 16,
    dim: int = 64,
    views: int = 4,
    noise: float = 2.0,
    text_noise: float = 4.0,
    val_per_class: int = 4,
    test_per_class: int = 50,
    logit_scale: float = 30.0,
    seed: int = 0,
) -> tuple[FeatureData, torch.Tensor, torch.Tensor]:
    """Returns (FeatureData, test_features, test_labels)."""
    g = torch.Generator().manual_seed(seed)
    means = class_means(num_classes, dim, g)
    train, train_labels = sample_features(means, shots, noise, g)
    view_noise = 0.3 * noise
    train_views = F.normalize(
        train.unsqueeze(0) + view_noise * torch.randn(views, *train.shape, generator=g) / dim**0.5,
        dim=-1,
    )
    val, val_labels = sample_features(means, val_per_class, noise, g)
    test, test_labels = sample_features(means, test_per_class, noise, g)

    def text(noise_level: float) -> torch.Tensor:
        cols = means + noise_level * torch.randn(num_classes, dim, generator=g) / dim**0.5
        return F.normalize(cols, dim=-1).T.contiguous()

    classifiers = {
        "positive": text(text_noise),
        "description": text(text_noise),
        "negative": F.normalize(-text(text_noise).T, dim=-1).T.contiguous(),
    }
    data = FeatureData(
        train_features=train,
        train_labels=train_labels,
        train_views=train_views,
        val_features=val,
        val_labels=val_labels,
        classifiers=classifiers,
        logit_scale=logit_scale,
    )
    return data, test, test_labels
