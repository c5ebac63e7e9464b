"""TaskRes: Task Residual tuning (Yu et al., CVPR 2023, "Task Residual for Tuning
Vision-Language Models"; official code geekyutao/TaskRes, ``trainers/taskres.py``).

A learnable residual on the frozen text classifier, initialised at zero:

    t      (d, C)   the base classifier (zero-shot text features)
    x      (d, C)   learnable, zeros at the start
    t'     = t + alpha * x                                  (d, C)
    logits = s * f @ norm(t')                               (N, C)

f (N, d) normalised image features. Only x trains, with cross-entropy, as the official
Dassl configs do: Adam lr 2e-3 (ImageNet 2e-4), weight decay 5e-4 (Dassl's default, L2),
batch 256, 200 epochs at 8 and 16 shots, 100 below (``train_regular.sh``), one warm-up
epoch at a constant 1e-5 then Dassl's cosine per epoch (restarted after the warm-up, see
:func:`.clip_adapter.dassl_epoch_factor`), the last partial batch dropped. alpha = 0.5
(Oxford Flowers 1.0). The official model is the last epoch's (Dassl's default final
model), which needs no validation data: ``selection="last"`` is the default and the
fixed setting of ``RunConfig(val="none")``; ``selection="val"`` keeps the best val epoch.
The base classifier is built from CoOp's single hand-written prompt per dataset
(``templates="single"``, this method's default; ImageNet's official base also averages
seven ImageNet templates, an explicit ``RunConfig.templates`` gives it). Epoch e trains on
cached augmented view e % V, drawn with Dassl's crop scale (0.08, 1) + flip.

``base``: the base classifier t, a cached classifier by name ("positive": the template
classifier) or the path of a saved (d, C) tensor: the official "enhanced base" (text
features from a re-trained text projection, ``train_enhance.sh``) enters that way.

Differences from the official code (options): the residual is added to the *normalised*
mean text feature (the feature cache holds normalised classifiers), where the official
code adds it to the raw mean of the unnormalised prompt features (whose norm scales
alpha's effect); training runs in float32 where the official default is fp16.

The residual is a per-class table, so TaskRes cannot classify classes it was not trained
on (base-to-new and cross-dataset refuse it; domain generalisation over the same classes
runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..images import DASSL_CROP_SCALE
from .base import FeatureData, FeatureMethod, FitResult, register_method
from .clip_adapter import dassl_epoch_factor
from .training import batches_per_epoch, fit_epochs

SELECTIONS = ("last", "val")


def taskres_defaults(dataset: str | None, shots: int | None) -> tuple[float, float, int]:
    """(lr, alpha, epochs) of ``train_regular.sh`` for a dataset and shot count."""
    lr = 2e-4 if dataset == "imagenet" else 2e-3
    alpha = 1.0 if dataset == "oxford_flowers" else 0.5
    epochs = 200 if (shots or 16) >= 8 else 100
    return lr, alpha, epochs


class TaskResidual(nn.Module):
    """t' = t + alpha * x; logits = s * f @ norm(t'). base t (d, C), x (d, C) zeros."""

    def __init__(self, base: torch.Tensor, logit_scale: float, alpha: float) -> None:
        super().__init__()
        self.register_buffer("base", base.detach().clone().float(), persistent=False)
        self.residual = nn.Parameter(torch.zeros_like(self.base))
        self.alpha = float(alpha)
        self.logit_scale = float(logit_scale)

    def classifier(self) -> torch.Tensor:
        """(d, C) norm(t + alpha * x), columns normalised."""
        return F.normalize(self.base + self.alpha * self.residual, dim=0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(N, d) normalised features -> (N, C) logits."""
        return self.logit_scale * f @ self.classifier()


def load_base(name: str, data: FeatureData) -> torch.Tensor:
    """The base classifier: a cached one by name, or a saved (d, C) tensor file."""
    if name in data.classifiers:
        return data.classifiers[name].float()
    path = Path(name)
    if not path.is_file():
        raise ValueError(
            f"taskres: base {name!r} is neither a cached classifier "
            f"({', '.join(sorted(data.classifiers))}) nor a tensor file"
        )
    base = torch.load(path, map_location="cpu")
    expected = (data.dim, data.num_classes)
    if not isinstance(base, torch.Tensor) or tuple(base.shape) != expected:
        raise ValueError(f"taskres: {path} must hold a tensor of shape (d, C) = {expected}")
    return base.float().to(data.device)


@register_method
class TaskRes(FeatureMethod):
    """A zero-initialised residual added to the text classifier, trained with Adam."""

    name = "taskres"
    default_templates = "single"  # the official base: CoOp's one prompt per dataset
    no_val_options: ClassVar[dict] = {"selection": "last"}  # the official final model

    @dataclass
    class Options:
        dataset: str | None = None  # picks lr and alpha (``train_regular.sh``)
        alpha: float | None = None  # residual scale; None: 0.5 (Oxford Flowers 1.0)
        base: str = "positive"  # a cached classifier, or a (d, C) tensor file
        epochs: int | None = None  # None: 200 at >= 8 shots, else 100
        lr: float | None = None  # None: 2e-3 (ImageNet 2e-4)
        weight_decay: float = 5e-4
        batch_size: int = 256
        warmup_epochs: int = 1
        warmup_lr: float = 1e-5
        selection: str = "last"  # "last": the official final model; "val": best val epoch
        crop_scale: tuple[float, float] = DASSL_CROP_SCALE
        drop_last: bool = True
        progress: bool = False

    module: TaskResidual | None = None

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.selection not in SELECTIONS:
            raise ValueError(f"taskres: selection must be one of {SELECTIONS}")

    def view_scale(self) -> tuple[float, float]:
        return (float(self.options.crop_scale[0]), float(self.options.crop_scale[1]))

    def settings(self, data: FeatureData) -> tuple[float, float, int]:
        """(lr, alpha, epochs) with the official defaults filled in."""
        o = self.options
        lr, alpha, epochs = taskres_defaults(o.dataset, data.shots)
        return (
            o.lr if o.lr is not None else lr,
            o.alpha if o.alpha is not None else alpha,
            o.epochs if o.epochs is not None else epochs,
        )

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o = self.options
        lr, alpha, epochs = self.settings(data)
        module = self.module = TaskResidual(load_base(o.base, data), data.logit_scale, alpha)
        module.to(data.device)
        optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=o.weight_decay)
        steps = batches_per_epoch(data.train_labels.shape[0], o.batch_size, o.drop_last)

        def schedule(total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda it: dassl_epoch_factor(
                    it // steps, epochs, o.warmup_epochs, o.warmup_lr / lr
                ),
            )

        result = fit_epochs(
            module,
            optimizer,
            data,
            epochs=epochs,
            batch_size=o.batch_size,
            loss_fn=lambda f, y: F.cross_entropy(module(f.float()), y),
            logits_fn=lambda f: module(f.float()),
            seed=seed,
            scheduler_fn=schedule,
            progress=o.progress,
            desc=self.name,
            keep_best=o.selection == "val",
            drop_last=o.drop_last,
        )
        result.chosen.update(alpha=alpha, lr=lr, epochs=epochs, selection=o.selection)
        return result

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError("taskres: call fit() before logits()")
        return self.module(features.float())

    def trainable_parameters(self) -> int:
        return 0 if self.module is None else self.module.residual.numel()
