"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., ICLR 2024, "A
Hard-to-Beat Baseline for Training-free CLIP-based Adaptation"; official code
mrflogs/ICLR24, ``main_few_shots.py`` and ``main_base2new.py``).

Training-free. Every augmented view of every few-shot image is one sample x_i (N = V M
rows, normalised, label y_i); the classes share one covariance:

    mu_c   = mean_{i: y_i = c} x_i                                (C, d) class means
    z_i    = x_i - mu_{y_i}                                       (N, d) centred samples
    S      = cov(z) = (z - mean z)^T (z - mean z) / (N - 1)        (d, d)
    P      = d * pinv((N - 1) S + tr(S) I)                         (d, d) shrunk precision
    W_gda  = (mu P)^T                                              (d, C)
    b_c    = log(1 / C) - mu_c P mu_c^T / 2                        (C,)
    logits = s * f @ W  +  alpha * (f @ W_gda + b)                 (N, C)

P is the official "KS estimator" (``covariance="shrunk"``, the few-shot script). The
base-to-new script estimates the base classes' covariance as the mean of the per-class
sample covariances, P = pinv(mean_c cov(x_{y=c})) (``covariance="pooled"``; the default
under ``protocol="base_to_new"``). alpha is the first best of (1e-4, ..., 100) on val
(strict ``>``, starting from accuracy 0 and alpha 0.1, as the official loop does).

New classes (base-to-new, cross-dataset), as ``main_base2new.py`` synthesises them: for
each new text column t_e, its k = 64 nearest training samples X_e (by t_e . x), the mean
mu_e = mean([X_e; t_e repeated 16 times]), the covariance C_e = (X_e - t_e)^T (X_e - t_e)
/ (k - 1) around t_e, and P_new = mean_e d * pinv((k - 1) C_e + tr(C_e) I); then W, b as
above with a uniform prior over the E new classes, at the alpha chosen on base.

The matrices are symmetric, so their pseudo-inverses are taken by an eigendecomposition
(``pinv(hermitian=True)``), where the official code's ``pinv`` uses an SVD: the same
matrix to float rounding.

Differences from the official code (options): the text logits use the backbone's own
scale s where the code writes 100 (CLIP's s, so equal there); the official ``512``
(ViT-B/16's d) in the new-class precision is d; k is capped at N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import FeatureData, FeatureMethod, FitResult, accuracy, register_method

ALPHAS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
COVARIANCES = ("shrunk", "pooled")


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """x (N, d), y (N,) -> (C, d) per-class means (a class without samples: zeros)."""
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).to(x)
    return sums / counts[:, None]


def shrunk_precision(centred: torch.Tensor) -> torch.Tensor:
    """The official KS estimator: d * pinv((N - 1) S + tr(S) I), S = cov(centred), (d, d)."""
    n, d = centred.shape
    if n < 2:  # one sample: no spread to estimate (the formula divides by N - 1)
        return centred.new_zeros(d, d)
    cov = torch.cov(centred.T)
    eye = torch.eye(d, dtype=centred.dtype, device=centred.device)
    return d * torch.linalg.pinv((n - 1) * cov + cov.trace() * eye, hermitian=True)


def pooled_precision(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``main_base2new.py``'s estimator: pinv(mean_c cov(x_{y=c})), (d, d) (classes with
    fewer than two samples add a zero covariance, where torch's ``cov`` would give NaN)."""
    d = x.shape[1]
    covs = []
    for c in range(num_classes):
        rows = x[y == c]
        covs.append(torch.cov(rows.T) if rows.shape[0] > 1 else x.new_zeros(d, d))
    return torch.linalg.pinv(torch.stack(covs).mean(0), hermitian=True)


def gaussian_classifier(
    means: torch.Tensor, precision: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, d) means, (d, d) precision P -> W_gda (d, C) = (mu P)^T and b (C,) =
    log(1 / C) - diag(mu P mu^T) / 2 (uniform class prior)."""
    num_classes = means.shape[0]
    projected = means @ precision  # (C, d) mu P
    bias = math.log(1.0 / num_classes) - 0.5 * (projected * means).sum(-1)
    return projected.T, bias


@register_method
class GDA(FeatureMethod):
    """Zero-shot CLIP plus a linear discriminant with a shared, shrunk covariance."""

    name = "gda"

    @dataclass
    class Options:
        alphas: tuple[float, ...] = ALPHAS  # the official val grid (first best)
        alpha: float | None = None  # fixed alpha: no search on val
        covariance: str | None = None  # "shrunk" / "pooled"; None: by protocol
        protocol: str | None = None  # filled by the run layer
        synth_k: int = 64  # nearest training samples per new class
        synth_text_weight: int = 16  # copies of the text column in a new class's mean
        views: bool = True  # False: the unaugmented features, one sample per image

    weights: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if o.covariance is not None and o.covariance not in COVARIANCES:
            raise ValueError(f"gda: covariance must be one of {COVARIANCES}, got {o.covariance!r}")
        if not o.alphas:
            raise ValueError("gda: alphas must list at least one value")
        if o.synth_k < 1 or o.synth_text_weight < 0:
            raise ValueError("gda: synth_k must be >= 1 and synth_text_weight >= 0")

    def covariance(self) -> str:
        if self.options.covariance is not None:
            return self.options.covariance
        return "pooled" if self.options.protocol == "base_to_new" else "shrunk"

    def samples(self, data: FeatureData) -> tuple[torch.Tensor, torch.Tensor]:
        """(V M, d) samples (every view of every image) and their (V M,) labels."""
        if not self.options.views:
            return data.train_features.float(), data.train_labels
        views = data.train_views.float()
        return views.reshape(-1, views.shape[-1]), data.train_labels.repeat(views.shape[0])

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        x, y = self.samples(data)
        c = data.num_classes
        means = class_means(x, y, c)
        if self.covariance() == "shrunk":
            precision = shrunk_precision(x - means[y])
        else:
            precision = pooled_precision(x, y, c)
        self.weights, self.bias = gaussian_classifier(means, precision)
        self.samples_x = x
        self.text = data.classifiers["positive"].float()
        self.scale = float(data.logit_scale)
        result = FitResult(chosen={"covariance": self.covariance()})
        if self.options.alpha is not None:
            self.alpha = float(self.options.alpha)
        else:
            self.alpha, result.best_val_acc, result.history = self.search(data)
        result.chosen["alpha"] = self.alpha
        return result

    def search(self, data: FeatureData) -> tuple[float, float, list[dict]]:
        """The official loop: best accuracy starts at 0 and alpha at 0.1; strict ``>``."""
        f = data.val_features.float()
        clip_logits = self.scale * f @ self.text
        gda_logits = f @ self.weights + self.bias
        best_acc, best_alpha, history = 0.0, 0.1, []
        for alpha in self.options.alphas:
            acc = accuracy(clip_logits + alpha * gda_logits, data.val_labels)
            history.append({"alpha": alpha, "val_acc": acc})
            if acc > best_acc:
                best_acc, best_alpha = acc, alpha
        return float(best_alpha), best_acc, history

    def _fitted(self) -> None:
        if self.weights is None:
            raise RuntimeError("gda: call fit() before logits()")

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._fitted()
        f = features.float()
        return self.scale * f @ self.text + self.alpha * (f @ self.weights + self.bias)

    def new_class_classifier(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d, E) text columns of new classes -> their synthesised W (d, E), b (E,)."""
        x, d = self.samples_x, self.samples_x.shape[1]
        k = min(self.options.synth_k, x.shape[0])
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        means, precisions = [], []
        for t in text.T:
            near = x[torch.topk(t @ x.T, k=k, largest=True).indices]  # (k, d)
            copies = t[None].expand(self.options.synth_text_weight, d)
            means.append(torch.cat([near, copies]).mean(0))
            centred = near - t[None]
            cov = centred.T @ centred / max(1, k - 1)
            matrix = (k - 1) * cov + cov.trace() * eye
            precisions.append(d * torch.linalg.pinv(matrix, hermitian=True))
        return gaussian_classifier(torch.stack(means), torch.stack(precisions).mean(0))

    @torch.no_grad()
    def logits_for(self, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, E) over new classes: their Gaussians synthesised from the text
        columns and the nearest training samples (the official base-to-new recipe)."""
        self._fitted()
        text = classifier.float().to(features.device)
        weights, bias = self.new_class_classifier(text)
        f = features.float()
        return self.scale * f @ text + self.alpha * (f @ weights + bias)
