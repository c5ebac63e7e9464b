"""Linear probe: logistic regression on frozen image features (CLIP paper, Sec. 3.2).

    p(y | f) = softmax(f @ A + b)          A (d, C), b (C,), f (N, d) normalised
    minimise  sum_i CE(f_i @ A + b, y_i) + ||A||^2 / (2 C_reg)

fitted with L-BFGS (scikit-learn's ``LogisticRegression(solver="lbfgs")``). The inverse
regularisation strength ``C_reg`` is chosen on the few-shot validation split as the CLIP
and CoOp probes do: a coarse sweep over ``10^-6 .. 10^6`` (7 values), then a search that
halves the step in log10 around the best value (``refine_steps`` rounds), staying inside the
coarse range. Ties go to the weaker regularisation (the larger ``C_reg``), as CoOp's probe
sweeps from 1e6 down and keeps the first best: with very small ``C_reg`` the weights shrink
towards the class means and the accuracy plateaus, so the other tie-break would drift to
ever stronger regularisation. The probe is then refitted on the
few-shot training features with the chosen value.

Training uses the features of the few-shot images under the test transform
(``FeatureData.train_features``), not augmented views, as the CLIP protocol does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from .base import FeatureData, FeatureMethod, FitResult, accuracy, register_method


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, c_reg: float, max_iter: int, seed: int
) -> LogisticRegression:
    """One L-BFGS fit; convergence warnings are silenced (small C converges slowly and
    the CLIP protocol caps iterations too)."""
    model = LogisticRegression(C=c_reg, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return model


@register_method
class LinearProbe(FeatureMethod):
    """Multinomial logistic regression, regularisation chosen on val."""

    name = "linear_probe"

    @dataclass
    class Options:
        c_reg: float | None = None  # fixed inverse regularisation; None: search on val
        coarse: tuple[float, ...] = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)
        refine_steps: int = 4  # rounds of halving the log10 step around the best value
        max_iter: int = 1000

    model: LogisticRegression | None = None
    num_classes: int = 0

    def _val_accuracy(self, data: FeatureData, c_reg: float, seed: int) -> float:
        model = fit_logistic(self._x(data), self._y(data), c_reg, self.options.max_iter, seed)
        return self._score(model, data.val_features, data.val_labels, data.num_classes)

    @staticmethod
    def _x(data: FeatureData) -> np.ndarray:
        return data.train_features.float().cpu().numpy()

    @staticmethod
    def _y(data: FeatureData) -> np.ndarray:
        return data.train_labels.cpu().numpy()

    @staticmethod
    def _scores(model: LogisticRegression, features: torch.Tensor, num_classes: int):
        """(N, C) decision values, with a column of -inf for classes absent from training."""
        raw = model.decision_function(features.float().cpu().numpy())
        if raw.ndim == 1:  # two classes: sklearn returns one column
            raw = np.stack([-raw, raw], axis=1)
        out = np.full((raw.shape[0], num_classes), -np.inf, dtype=np.float32)
        out[:, model.classes_] = raw
        return torch.from_numpy(out)

    def _score(self, model, features, labels, num_classes) -> float:
        return accuracy(self._scores(model, features, num_classes), labels.cpu())

    def search(self, data: FeatureData, seed: int) -> tuple[float, list[dict]]:
        """Coarse sweep, then halving log-steps around the best value; returns (C, trace)."""
        trace: dict[float, float] = {}

        def score(log_c: float) -> float:
            log_c = round(log_c, 6)
            if log_c not in trace:
                trace[log_c] = self._val_accuracy(data, 10.0**log_c, seed)
            return trace[log_c]

        logs = sorted(math.log10(c) for c in self.options.coarse)
        low, high = logs[0], logs[-1]
        best = max(logs, key=lambda x: (score(x), x))  # ties: weaker regularisation
        step = (logs[1] - logs[0]) / 2 if len(logs) > 1 else 1.0
        for _ in range(self.options.refine_steps):
            around = [x for x in (best - step, best, best + step) if low <= x <= high]
            best = max(around, key=lambda x: (score(x), x))
            step /= 2
        rows = [{"log10_c": k, "val_acc": v} for k, v in sorted(trace.items())]
        return 10.0**best, rows

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        result = FitResult()
        if self.options.c_reg is not None:
            c_reg = self.options.c_reg
        else:
            c_reg, result.history = self.search(data, seed)
        self.num_classes = data.num_classes
        self.model = fit_logistic(self._x(data), self._y(data), c_reg, self.options.max_iter, seed)
        result.best_val_acc = self._score(
            self.model, data.val_features, data.val_labels, data.num_classes
        )
        result.chosen["c_reg"] = c_reg
        return result

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("linear_probe: call fit() before logits()")
        return self._scores(self.model, features, self.num_classes).to(features.device)

    def trainable_parameters(self) -> int:
        if self.model is None:
            return 0
        return int(self.model.coef_.size + self.model.intercept_.size)
