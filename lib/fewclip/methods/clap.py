"""CLAP and ZS-LP (Silva-Rodriguez et al., CVPR 2024, "A Closer Look at the Few-Shot
Adaptation of Large Vision-Language Models"; official code jusiro/CLAP,
``trainers/adapters.py``).

ZS-LP: a linear probe whose class prototypes start at the zero-shot text features,

    P      (C, d)   learnable, P = W^T at the start (W (d, C) the text classifier)
    logits = s * f @ norm(P)^T                                   (N, C)

CLAP adds a class-adaptive penalty that keeps each prototype near its zero-shot start,
weighted by how well zero-shot CLIP already does on that class:

    lambda_c = mean_{i: y_i = c} softmax(s x_i @ W)_c            (C,) on the training samples
    loss     = CE(logits, y) + mean_c lambda_c ||P_c - W_c||^2    (``constraint="l2"``)

``constraint="none"`` is ZS-LP (the same training without the penalty). The training
samples are every cached augmented view of every few-shot image (the official code
encodes 20 augmented copies of the training set); an epoch shuffles all of them and
draws as many batches of 256 as the training images alone would give (Dassl's train
loader length, its last partial batch dropped), as the official epoch does. SGD lr 0.1,
momentum 0.9, no weight decay, 300 epochs, one warm-up epoch at a constant 1e-5 then
Dassl's cosine per epoch; the model is the last epoch's. These settings are fixed: no
validation data is used (they are CLAP's setting for ``RunConfig(val="none")``, and its
default). The classifier is CoOp's single prompt per dataset (``templates="single"``).

Differences from the official code (options): the prototypes start at, and the penalty
measures distance to, the *normalised* text features (the feature cache holds normalised
classifiers), where the official code uses the raw mean of the unnormalised prompt
features (whose norm scales the penalty); the pool holds the run's V cached views
(``RunConfig.augment_views``, 10 by default) rather than 20; fp32 rather than fp16.

The prototypes are a per-class table: CLAP cannot classify classes it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..images import DASSL_CROP_SCALE
from .base import FeatureData, FeatureMethod, FitResult, accuracy, register_method
from .clip_adapter import dassl_epoch_factor
from .training import batches_per_epoch

CONSTRAINTS = ("l2", "none")


def class_adaptive_weights(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """lambda (C,): per class, the mean zero-shot probability of the true class over its
    training samples (``init_lagrangian_multipliers``). logits (N, C), labels (N,)."""
    probs = logits.softmax(-1)
    one_hot = F.one_hot(labels, logits.shape[1]).to(probs)
    return torch.diag(probs.T @ one_hot) / one_hot.sum(0)


class ZeroShotProbe(nn.Module):
    """logits = s * f @ norm(P)^T, P (C, d) initialised at W^T."""

    def __init__(self, text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text", text.detach().clone().float().T, persistent=False)
        self.prototypes = nn.Parameter(self.text.clone())
        self.logit_scale = float(logit_scale)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * f @ F.normalize(self.prototypes, dim=-1).T

    def penalty(self, weights: torch.Tensor) -> torch.Tensor:
        """mean_c lambda_c ||P_c - W_c||^2."""
        return torch.mean(weights * (self.prototypes - self.text).pow(2).sum(-1))


@register_method
class CLAP(FeatureMethod):
    """Zero-shot-initialised linear probe with CLAP's class-adaptive constraint."""

    name = "clap"
    default_templates = "single"  # the official prompts: CoOp's one per dataset
    no_val_options: ClassVar[dict] = {}  # its settings are fixed; val is never read

    @dataclass
    class Options:
        constraint: str = "l2"  # "l2": CLAP; "none": ZS-LP
        epochs: int = 300
        lr: float = 0.1
        momentum: float = 0.9
        weight_decay: float = 0.0
        batch_size: int = 256
        warmup_epochs: int = 1
        warmup_lr: float = 1e-5
        crop_scale: tuple[float, float] = DASSL_CROP_SCALE
        progress: bool = False

    module: ZeroShotProbe | None = None

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.constraint not in CONSTRAINTS:
            raise ValueError(f"clap: constraint must be one of {CONSTRAINTS} ('none': ZS-LP)")

    def view_scale(self) -> tuple[float, float]:
        return (float(self.options.crop_scale[0]), float(self.options.crop_scale[1]))

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o = self.options
        module = self.module = ZeroShotProbe(data.classifiers["positive"], data.logit_scale)
        module.to(data.device)
        views = data.train_views.float()
        pool = views.reshape(-1, views.shape[-1])  # (V M, d)
        pool_labels = data.train_labels.repeat(views.shape[0])
        weights = None
        if o.constraint == "l2":
            with torch.no_grad():
                weights = class_adaptive_weights(module(pool), pool_labels)
        optimizer = torch.optim.SGD(
            module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        steps = batches_per_epoch(data.train_labels.shape[0], o.batch_size, drop_last=True)
        generator = torch.Generator().manual_seed(seed)
        result = FitResult()
        for epoch in range(o.epochs):
            factor = dassl_epoch_factor(epoch, o.epochs, o.warmup_epochs, o.warmup_lr / o.lr)
            for group in optimizer.param_groups:
                group["lr"] = o.lr * factor
            order = torch.randperm(pool.shape[0], generator=generator).to(data.device)
            losses = []
            for step in range(steps):
                idx = order[step * o.batch_size : (step + 1) * o.batch_size]
                f, y = pool.index_select(0, idx), pool_labels.index_select(0, idx)
                loss = F.cross_entropy(module(f), y)
                if weights is not None:
                    loss = loss + module.penalty(weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            row = {"epoch": epoch, "loss": sum(losses) / len(losses), "lr": o.lr * factor}
            result.history.append(row)
        result.best_epoch = o.epochs - 1 if o.epochs else None
        if data.val_labels.numel():  # reported only: nothing is chosen on val
            with torch.no_grad():
                result.best_val_acc = accuracy(module(data.val_features.float()), data.val_labels)
        result.chosen.update(constraint=o.constraint, epochs=o.epochs)
        if weights is not None:
            result.chosen["lambda_mean"] = float(weights.mean())
        return result

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError("clap: call fit() before logits()")
        return self.module(features.float())

    def trainable_parameters(self) -> int:
        return 0 if self.module is None else self.module.prototypes.numel()
