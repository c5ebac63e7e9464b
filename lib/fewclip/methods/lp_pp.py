"""LP++: a linear probe blended with the text classifier by learned class-wise weights
(Huang et al., CVPR 2024, "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP";
official code FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``).

    x      (N, d)   the few-shot features (one augmented view each, as the official code
                    encodes the training set once with its random crop), N = C K
    A (C, d), b (C,) the visual linear classifier; A starts at the per-class *sums* of the
                    features, b at PyTorch's default ``nn.Linear`` draw
    a      (C,)     class-wise blending weights, all a_0 at the start
    logits = x @ A^T + b  +  a * (x @ W)                         (N, C), unscaled cosines

Full-batch optimisation with step sizes derived from Lipschitz constants (no search):

    lr_A   = 4 N / lambda_max(x^T x)                              SGD, momentum 0.9
    lr_a   = N / (4 max_c sum_i (x_i . w_c)^2)                    plain gradient step
    a_0    = 250 * mean_{c, c'} mean_{i: y_i = c} x_i . w_c'       (the official init)

Each epoch takes one step on (A, b) with the cross-entropy of all N samples; every 10th
epoch also steps a with its gradient as the official code leaves it: a's gradient is never
zeroed, so the step uses the sum of its gradients since the start (``alpha_grad=
"accumulated"``; ``"current"`` uses the gradient of that epoch alone). 300 epochs. The
official code reports the test accuracy at the best val epoch (``>=``: the last of equal
epochs): ``selection="val"``; ``selection="last"`` keeps the final epoch and uses no
validation data (LP++'s setting for ``RunConfig(val="none")``: the steps are derived,
nothing else is tuned).

Differences from the official code (options): float32 where the official code runs the
probe in CLIP's fp16; the features are the run's first cached view (Tip-Adapter's crop
scale 0.5-1, as the official train transform).

A and a are per-class tables: LP++ cannot classify classes it was not trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureData, FeatureMethod, FitResult, accuracy, register_method

SELECTIONS = ("val", "last")
ALPHA_GRADS = ("accumulated", "current")


def lr_visual(x: torch.Tensor) -> float:
    """lr_A = 4 N / lambda_max(x^T x) (``calculate_lr_w``; float64 eigenvalues as scipy's
    ``eigh`` on the float32 product)."""
    gram = (x.T @ x).double()
    return float(4 * x.shape[0] / torch.linalg.eigvalsh(gram).max())


def lr_blend(x: torch.Tensor, text: torch.Tensor) -> float:
    """lr_a = N / (4 max_c sum_i (x_i . w_c)^2) (``calculate_lr_alpha``)."""
    return float(x.shape[0] / (4 * (x @ text).pow(2).sum(0).max()))


def init_blend(x: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, scale: float = 250.0):
    """a_0 = scale * mean of the (C, C) per-class means of x @ W (``calculate_init_alpha``:
    the means times K, then scale / K, in float64)."""
    num_classes = text.shape[1]
    one_hot = F.one_hot(labels, num_classes).to(x)
    centroids = (one_hot.T @ (x @ text)) / one_hot.sum(0)[:, None]  # (C, C)
    return float((scale * centroids.double()).mean())


class LinearProbePP(nn.Module):
    """logits = x @ A^T + b + a * (x @ W); A (C, d), b (C,), a (1, C), W (d, C)."""

    def __init__(self, centroids: torch.Tensor, text: torch.Tensor, alpha0: float) -> None:
        super().__init__()
        num_classes, dim = centroids.shape
        self.linear = nn.Linear(dim, num_classes, bias=True)  # b: PyTorch's default draw
        with torch.no_grad():
            self.linear.weight.copy_(centroids)
        self.alpha = nn.Parameter(torch.full((1, num_classes), float(alpha0)))
        self.register_buffer("text", text.detach().clone().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.alpha * (x @ self.text)


@register_method
class LPPlusPlus(FeatureMethod):
    """LP++: visual probe plus class-wise weighted text logits, derived step sizes."""

    name = "lp_pp"
    no_val_options: ClassVar[dict] = {"selection": "last"}  # derived steps, final epoch

    @dataclass
    class Options:
        epochs: int = 300
        momentum: float = 0.9
        alpha_every: int = 10  # a steps every this many epochs
        init_scale: float = 250.0  # a_0 = init_scale * mean text logit of the shots
        lr_w: float | None = None  # None: 4 N / lambda_max(x^T x)
        lr_alpha: float | None = None  # None: N / (4 max_c ||x w_c||^2)
        alpha_grad: str = "accumulated"  # official: a's gradient is never zeroed
        selection: str = "val"  # "val": best val epoch (ties: later); "last": final epoch

    module: LinearProbePP | None = None

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if o.selection not in SELECTIONS:
            raise ValueError(f"lp_pp: selection must be one of {SELECTIONS}")
        if o.alpha_grad not in ALPHA_GRADS:
            raise ValueError(f"lp_pp: alpha_grad must be one of {ALPHA_GRADS}")
        if o.alpha_every < 1:
            raise ValueError(f"lp_pp: alpha_every must be >= 1, got {o.alpha_every}")

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        o = self.options
        x, y = data.view(0).float(), data.train_labels
        text = data.classifiers["positive"].float()
        centroids = torch.zeros(data.num_classes, data.dim, device=x.device).index_add_(0, y, x)
        lr_w = o.lr_w if o.lr_w is not None else lr_visual(x)
        lr_alpha = o.lr_alpha if o.lr_alpha is not None else lr_blend(x, text)
        alpha0 = init_blend(x, y, text, o.init_scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = LinearProbePP(centroids, text, alpha0).to(x.device)
        self.module = module
        optimizer = torch.optim.SGD(module.linear.parameters(), lr=lr_w, momentum=o.momentum)
        use_val = o.selection == "val" and data.val_labels.numel() > 0
        result = FitResult()
        best_acc, best_state = -1.0, None
        for epoch in range(o.epochs):
            module.train()
            loss = F.cross_entropy(module(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (epoch + 1) % o.alpha_every == 0:
                with torch.no_grad():
                    module.alpha -= lr_alpha * module.alpha.grad
            if o.alpha_grad == "current":
                module.alpha.grad = None
            row = {"epoch": epoch, "loss": loss.item()}
            if use_val:
                with torch.no_grad():
                    acc = accuracy(module(data.val_features.float()), data.val_labels)
                row["val_acc"] = acc
                if acc >= best_acc:  # the official ">=": the last of equal epochs
                    best_acc, result.best_epoch = acc, epoch
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            result.history.append(row)
        if best_state is not None:
            module.load_state_dict(best_state)
            result.best_val_acc = best_acc
        else:
            result.best_epoch = o.epochs - 1 if o.epochs else None
        module.eval()
        result.chosen.update(lr_w=lr_w, lr_alpha=lr_alpha, alpha_init=alpha0, selection=o.selection)
        if not math.isfinite(lr_w) or not math.isfinite(lr_alpha):
            result.notes.append("lp_pp: a derived step size is not finite (degenerate features)")
        return result

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError("lp_pp: call fit() before logits()")
        return self.module(features.float())

    def trainable_parameters(self) -> int:
        return 0 if self.module is None else sum(p.numel() for p in self.module.parameters())
