"""Linear probe: logistic regression on frozen image features (CLIP paper, Sec. 3.2).

    p(y | f) = softmax(f @ A + b)          A (d, C), b (C,), f (N, d) normalised
    minimise  sum_i CE(f_i @ A + b, y_i) + ||A||^2 / (2 C_reg)

fitted with L-BFGS (scikit-learn's ``LogisticRegression(solver="lbfgs")``, 1,000
iterations). The inverse regularisation strength ``C_reg`` is chosen on the few-shot
validation split by CoOp's ``lpclip/linear_probe.py`` search (``search="lpclip"``, the
default), step for step:

1. coarse: ``C`` in 1e6, 1e4, ..., 1e-6 (that order); the first best (ties: the larger C);
2. ``left, right = best / 10, best * 10``; 8 rounds: fit both, keep the better (ties: the
   left, smaller C), then halve the interval in log10 towards it (left wins: ``right`` =
   the log-midpoint; right wins: ``left`` = the log-midpoint). No centre point is tried
   and the interval may leave the coarse range;
3. the chosen C is the winner of the last round, and its fitted probe is the result (no
   refit: the search already fitted it, and a refit would give identical values).

``search="halving"`` is the search this package used before (4 rounds of {best - step,
best, best + step} in log10, the centre included, clipped to the coarse range, ties to the
larger C); ``c_reg`` fixes C and skips the search. Every fit of a search is kept by its
C, so a value the search meets twice is fitted once.

Training uses the features of the few-shot images under the test transform
(``FeatureData.train_features``), not augmented views, as the CLIP protocol and lpclip do.

Every fit and score runs on one BLAS thread (:func:`one_blas_thread`): scikit-learn's BLAS
sums in another order on several threads, which moves the fitted weights in their last
bits and, at a near-tie of the search, the chosen C (``emoji_openmoji_subcategory``, 16
shots, seed 2: C 31.6 and 67.2% on one thread, C 1000 and 64.0% on two). One thread makes
a run's numbers independent of ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import FeatureData, FeatureMethod, FitResult, accuracy, register_method

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression


def one_blas_thread():
    """A context in which NumPy's and scikit-learn's BLAS use one thread (the same sums in
    the same order whatever ``OMP_NUM_THREADS`` says)."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    return threadpool_limits(limits=1, user_api="blas")


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, c_reg: float, max_iter: int, seed: int
) -> LogisticRegression:
    """One L-BFGS fit on one BLAS thread; convergence warnings are silenced (small C
    converges slowly and the CLIP protocol caps iterations too)."""
    from sklearn.exceptions import ConvergenceWarning  # lazy: seconds at import time
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c_reg, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return model


SEARCHES = ("lpclip", "halving")


def lpclip_search(
    val_acc: Callable[[float], float], coarse: Sequence[float], rounds: int | None = None
) -> float:
    """CoOp's ``lpclip`` search for C (see the module docstring); ``val_acc(C)`` scores one C.

    Coarse: the first best of ``coarse`` in the given order. Then ``rounds`` (default 8) of
    left/right bisection in log10, starting from [best / 10, best * 10]; ties go left.
    Returns the last round's winner (the coarse best with 0 rounds).
    """
    rounds = 8 if rounds is None else rounds
    accs = [val_acc(c) for c in coarse]
    best = coarse[int(np.argmax(accs))]
    left, right = 1e-1 * best, 1e1 * best
    for _ in range(rounds):
        acc_left, acc_right = val_acc(left), val_acc(right)
        mid = 0.5 * (np.log10(right) + np.log10(left))
        if acc_left < acc_right:
            best, lo, hi = right, mid, np.log10(right)
        else:
            best, lo, hi = left, np.log10(left), mid
        left, right = float(np.power(10, lo)), float(np.power(10, hi))
    return float(best)


def halving_search(
    val_acc: Callable[[float], float], coarse: Sequence[float], rounds: int | None = None
) -> float:
    """The earlier search of this package: the best coarse value (ties: larger C), then
    ``rounds`` (default 4) of {best - step, best, best + step} in log10 with the step halved
    each round, inside the coarse range; ties to the larger C."""
    rounds = 4 if rounds is None else rounds
    logs = sorted(math.log10(c) for c in coarse)
    score = lambda x: val_acc(10.0**x)
    low, high = logs[0], logs[-1]
    best = max(logs, key=lambda x: (score(x), x))
    step = (logs[1] - logs[0]) / 2 if len(logs) > 1 else 1.0
    for _ in range(rounds):
        around = [x for x in (best - step, best, best + step) if low <= x <= high]
        best = max(around, key=lambda x: (score(x), x))
        step /= 2
    return 10.0**best


@register_method
class LinearProbe(FeatureMethod):
    """Multinomial logistic regression, regularisation chosen on val."""

    name = "linear_probe"

    @dataclass
    class Options:
        c_reg: float | None = None  # fixed inverse regularisation; None: search on val
        search: str = "lpclip"  # CoOp's lpclip bisection, or "halving" (ours before)
        coarse: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # lpclip's order
        refine_steps: int | None = None  # rounds; None: 8 (lpclip) / 4 (halving)
        max_iter: int = 1000

    model: LogisticRegression | None = None
    num_classes: int = 0

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.search not in SEARCHES:
            raise ValueError(f"linear_probe: search must be one of {SEARCHES}")

    @staticmethod
    def _x(data: FeatureData) -> np.ndarray:
        return data.train_features.float().cpu().numpy()

    @staticmethod
    def _y(data: FeatureData) -> np.ndarray:
        return data.train_labels.cpu().numpy()

    @staticmethod
    def _scores(model: LogisticRegression, features: torch.Tensor, num_classes: int):
        """(N, C) decision values, with a column of -inf for classes absent from training."""
        with one_blas_thread():
            raw = model.decision_function(features.float().cpu().numpy())
        if raw.ndim == 1:  # two classes: sklearn returns one column
            raw = np.stack([-raw, raw], axis=1)
        out = np.full((raw.shape[0], num_classes), -np.inf, dtype=np.float32)
        out[:, model.classes_] = raw
        return torch.from_numpy(out)

    def _score(self, model, features, labels, num_classes) -> float:
        return accuracy(self._scores(model, features, num_classes), labels.cpu())

    def search(self, data: FeatureData, seed: int) -> tuple[float, LogisticRegression, list[dict]]:
        """The configured search; returns (C, the probe fitted with C, trace of every C
        tried with its val accuracy, in order of log10 C)."""
        fits: dict[float, tuple[float, LogisticRegression]] = {}
        x, y = self._x(data), self._y(data)

        def fit(c: float) -> tuple[float, LogisticRegression]:
            key = round(math.log10(c), 9)  # 10 ** log10(c) round trips may differ in an ulp
            if key not in fits:
                model = fit_logistic(x, y, c, self.options.max_iter, seed)
                acc = self._score(model, data.val_features, data.val_labels, data.num_classes)
                fits[key] = (acc, model)
            return fits[key]

        search = lpclip_search if self.options.search == "lpclip" else halving_search
        c_reg = search(lambda c: fit(c)[0], self.options.coarse, self.options.refine_steps)
        rows = [{"log10_c": k, "val_acc": v[0]} for k, v in sorted(fits.items())]
        return c_reg, fit(c_reg)[1], rows

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        result = FitResult()
        if self.options.c_reg is not None:
            c_reg = self.options.c_reg
            model = fit_logistic(self._x(data), self._y(data), c_reg, self.options.max_iter, seed)
        else:
            c_reg, model, result.history = self.search(data, seed)
        self.num_classes = data.num_classes
        self.model = model
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
