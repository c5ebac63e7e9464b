"""The interface every method shares, and the registry of methods by name.

Feature-level methods (zero-shot, linear probe, CLIP-Adapter, Tip-Adapter(-F),
DualAdapter) see only cached tensors, bundled in :class:`FeatureData`; they never touch the
encoders or files. Each is a :class:`FeatureMethod` subclass with an ``Options`` dataclass
(its hyper-parameters, recorded with every run), ``fit`` and ``logits``.

Shapes: ``M`` few-shot training images, ``V`` augmented views, ``d`` feature dimension,
``C`` classes. Image features and classifier columns are L2-normalised.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..metrics import accuracy  # noqa: F401  (re-exported: methods import it from here)


@dataclass
class FeatureData:
    """Everything a feature-level method may use for fitting.

    train_features: (M, d) features of the few-shot images under the test transform.
    train_views:    (V, M, d) features of V augmented views of the same images (random
                    resized crop + flip, as Tip-Adapter); training epoch e uses view e % V.
    train_labels:   (M,) int64 in [0, C).
    val_features:   (Nv, d), val_labels (Nv,): the few-shot validation split, the only
                    data used for epoch selection and hyper-parameter search.
    classifiers:    name -> (d, C) normalised text classifier. "positive" is always there
                    (the zero-shot classifier W); "negative" (DualAdapter's negative
                    templates) and "description" (CuPL descriptions) when available.
    logit_scale:    the backbone's s = exp(logit_scale) (about 100 for OpenAI CLIP).
    notes:          facts to carry into the run record (e.g. "no description file: W_d = W_t").
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    train_views: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    classifiers: dict[str, torch.Tensor]
    logit_scale: float
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.classifiers["positive"].shape[1]

    @property
    def dim(self) -> int:
        return self.train_features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train_features.device

    @property
    def cache_keys(self) -> torch.Tensor:
        """(M, d) Tip-Adapter cache keys: the augmented views averaged, then normalised."""
        return F.normalize(self.train_views.mean(0), dim=-1)

    @property
    def cache_values(self) -> torch.Tensor:
        """(M, C) one-hot cache values L."""
        return F.one_hot(self.train_labels, self.num_classes).float()

    def view(self, epoch: int) -> torch.Tensor:
        """(M, d) the augmented view used at a given epoch."""
        return self.train_views[epoch % self.train_views.shape[0]]


@dataclass
class FitResult:
    """What ``fit`` reports: chosen hyper-parameters, the selected epoch, the training curve."""

    chosen: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class FeatureMethod(ABC):
    """A method trained on cached features. Subclasses define ``name`` and ``Options``."""

    name: ClassVar[str]
    #: False for methods that use no few-shot image (zero-shot CLIP): the run layer then
    #: extracts no training features.
    uses_training_images: ClassVar[bool] = True

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Options)}
        unknown = set(options) - fields
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; valid: {sorted(fields)}"
            )
        self.options = self.Options(**options)

    @abstractmethod
    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        """Fit on ``data``; selection and search may use only its validation split."""

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) normalised image features -> (B, C) logits."""

    def logits_for(self, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(B, d) features -> (B, E) logits over *other* classes, given their (d, E) text
        classifier (base-to-new, cross-dataset). Only methods whose learned part does not
        depend on the training classes can do this; the others raise."""
        raise NotImplementedError(
            f"{self.name} learns per-class parameters of its training classes, so it cannot "
            "classify other classes; use it with protocol='few_shot' (or domain "
            "generalisation over the same classes)"
        )

    def trainable_parameters(self) -> int:
        """Number of parameters the method learns by gradient descent (0 if training-free)."""
        return 0

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options: Any):
    """Instantiate a registered method by name with its options."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)
