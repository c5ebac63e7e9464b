"""CLIP-Adapter (Gao et al., IJCV 2023, arXiv 2110.04544).

A two-layer bottleneck MLP on the frozen features, blended back with a residual ratio:

    A(x)   = ReLU(ReLU(x @ W1) @ W2)          W1 (d, d/r), W2 (d/r, d), no biases, r = 4
    f*     = alpha * A_v(f) + (1 - alpha) * f                 visual adapter   (Eq. 2-3)
    W*^T   = beta  * A_t(W^T) + (1 - beta) * W^T              text adapter     (Eq. 4)
    logits = s * norm(f*) @ norm(W*)                          (N, C)           (Eq. 5)

f (N, d) normalised image features, W (d, C) the zero-shot classifier, s the backbone's
logit scale. Variants: ``"visual"`` (the paper's default and the released code),
``"text"``, ``"both"``. Only the adapters train, with cross-entropy. The width follows the
backbone (d / r), where the released code hard-codes 1024 (RN50).

Training as the released code (Dassl): SGD lr 0.002, momentum 0.9, weight decay 5e-4,
batch 32, 200 epochs, one warm-up epoch at a constant 1e-5. The rate changes once per
epoch (:func:`dassl_epoch_factor`): Dassl's default ``WARMUP_RECOUNT=True`` restarts the
cosine after the warm-up, so epoch e >= W (W warm-up epochs) trains at
``lr * (1 + cos(pi (e - W) / E)) / 2``, E the epoch count. The last partial batch of each
epoch is dropped (Dassl's train loader, ``drop_last``). Epoch e trains on cached augmented
view e % V of the few-shot images, drawn with Dassl's random resized crop scale (0.08, 1)
+ flip (option ``crop_scale``; views are cached per scale), the feature-cache equivalent
of the released code's on-line augmentation (which draws a new crop every epoch; ours
cycles through V cached crops). The classifier is built from the released code's single
hand-written prompt per dataset (CoOp's ``CUSTOM_TEMPLATES``, our ``templates="single"``,
the default for this method); an explicit ``RunConfig.templates`` overrides it. The best
epoch on the validation split is kept (the released code keeps the last epoch:
``selection="last"``).

Because the adapters are functions of a feature, not per-class tables, a trained
CLIP-Adapter also classifies classes it never saw (:meth:`CLIPAdapter.logits_for`), which
is what base-to-new evaluation needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..images import DASSL_CROP_SCALE
from ..training import dassl_lr_factor
from .base import FeatureData, FeatureMethod, FitResult, register_method
from .training import batches_per_epoch, fit_epochs

VARIANTS = ("visual", "text", "both")


class Adapter(nn.Sequential):
    """A(x) = ReLU(ReLU(x W1) W2), no biases: (..., d) -> (..., d)."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        hidden = max(1, dim // reduction)
        super().__init__(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(inplace=True),
        )


class CLIPAdapterModule(nn.Module):
    """The CLIP-Adapter forward. classifier (d, C) normalised; s the logit scale."""

    def __init__(
        self,
        classifier: torch.Tensor,
        logit_scale: float,
        variant: str = "visual",
        alpha: float = 0.2,
        beta: float = 0.2,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        dim = classifier.shape[0]
        self.register_buffer("classifier", classifier.detach().clone().float(), persistent=False)
        self.logit_scale = float(logit_scale)
        self.alpha, self.beta = float(alpha), float(beta)
        self.visual = Adapter(dim, reduction) if variant in ("visual", "both") else None
        self.text = Adapter(dim, reduction) if variant in ("text", "both") else None

    def image(self, f: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, d) normalised f* = norm(alpha * A_v(f) + (1 - alpha) * f)."""
        if self.visual is not None:
            f = self.alpha * self.visual(f) + (1 - self.alpha) * f
        return F.normalize(f, dim=-1)

    def class_weights(self, classifier: torch.Tensor | None = None) -> torch.Tensor:
        """(d, E) -> (d, E) normalised W* (the training classifier when None)."""
        w = (self.classifier if classifier is None else classifier.float()).T
        if self.text is not None:
            w = self.beta * self.text(w) + (1 - self.beta) * w
        return F.normalize(w, dim=-1).T

    def forward(self, f: torch.Tensor, classifier: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) normalised features -> (N, C) logits s * norm(f*) @ norm(W*)."""
        return self.logit_scale * self.image(f) @ self.class_weights(classifier)


def dassl_epoch_factor(epoch: int, epochs: int, warmup_epochs: int, warmup_factor: float) -> float:
    """Learning-rate factor (of the base lr) at ``epoch`` (from 0) under Dassl's cosine
    schedule (``CosineAnnealingLR(T_max=epochs)``, stepped once per epoch) wrapped in a
    constant warm-up with ``WARMUP_RECOUNT=True`` (Dassl's default): the warm-up epochs get
    ``warmup_factor``; the cosine starts counting only after them, so epoch e >= W gets
    (1 + cos(pi (e - W) / epochs)) / 2 (E = 4, W = 1: 1e-5/lr, 1, 0.854, 0.5): the one
    Dassl schedule, :func:`fewclip.training.dassl_lr_factor`, with base lr 1."""
    return dassl_lr_factor(epoch, max(1, epochs), 1.0, warmup_epochs, "constant", warmup_factor)


@register_method
class CLIPAdapter(FeatureMethod):
    """Residual bottleneck adapters on the image feature, the classifier, or both."""

    name = "clip_adapter"
    default_templates = "single"  # the released code's one prompt per dataset

    @dataclass
    class Options:
        variant: str = "visual"  # "visual" (paper default), "text" or "both"
        alpha: float = 0.2  # visual residual ratio (0.6-0.8 for far-from-CLIP data)
        beta: float = 0.2  # text residual ratio
        reduction: int = 4  # bottleneck width d / reduction
        epochs: int = 200
        batch_size: int = 32
        lr: float = 0.002
        momentum: float = 0.9
        weight_decay: float = 5e-4
        warmup_epochs: int = 1
        warmup_lr: float = 1e-5
        selection: str = "val"  # "val": best epoch on val; "last": the released code
        crop_scale: tuple[float, float] = DASSL_CROP_SCALE  # views' random-resized-crop scale
        drop_last: bool = True  # drop the last partial batch (Dassl's train loader)
        progress: bool = False

    module: CLIPAdapterModule | None = None

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.variant not in VARIANTS:
            raise ValueError(f"clip_adapter: variant must be one of {VARIANTS}")
        if self.options.selection not in ("val", "last"):
            raise ValueError("clip_adapter: selection must be 'val' or 'last'")

    def view_scale(self) -> tuple[float, float]:
        return (float(self.options.crop_scale[0]), float(self.options.crop_scale[1]))

    def build(self, data: FeatureData, seed: int = 0) -> CLIPAdapterModule:
        """The module at its initial state (PyTorch's default init under ``seed``)."""
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = CLIPAdapterModule(
                data.classifiers["positive"],
                data.logit_scale,
                o.variant,
                o.alpha,
                o.beta,
                o.reduction,
            )
        return module.to(data.device)

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o = self.options
        module = self.module = self.build(data, seed)
        optimizer = torch.optim.SGD(
            module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        steps_per_epoch = batches_per_epoch(data.train_labels.shape[0], o.batch_size, o.drop_last)

        def schedule(total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda it: dassl_epoch_factor(
                    it // steps_per_epoch, o.epochs, o.warmup_epochs, o.warmup_lr / o.lr
                ),
            )

        result = fit_epochs(
            module,
            optimizer,
            data,
            epochs=o.epochs,
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
        result.chosen.update(variant=o.variant, alpha=o.alpha, beta=o.beta)
        return result

    def _module(self) -> CLIPAdapterModule:
        if self.module is None:
            raise RuntimeError("clip_adapter: call fit() before logits()")
        return self.module

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._module()(features.float())

    @torch.no_grad()
    def logits_for(self, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, E) over another class list: the adapters apply to any feature."""
        module = self._module()
        return module(features.float(), classifier.to(features.device))

    def trainable_parameters(self) -> int:
        if self.module is None:
            return 0
        return sum(p.numel() for p in self.module.parameters())
