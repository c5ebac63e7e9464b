"""The interface of feature-level methods; the registry and :class:`FitResult` (defined in
:mod:`fewclip.fitting`, below both method families) are re-exported from here.

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

from ..fitting import (  # noqa: F401  (FitResult and the registry re-exported from here)
    METHODS,
    FitResult,
    check_method_options,
    get_method,
    register_method,
)
from ..images import CACHE_CROP_SCALE
from ..metrics import accuracy  # noqa: F401  (re-exported: methods import it from here)


@dataclass
class FeatureData:
    """Everything a feature-level method may use for fitting.

    train_features: (M, d) features of the few-shot images under the test transform.
    train_views:    (V, M, d) features of V augmented views of the same images (random
                    resized crop + flip, with the method's crop scale, see
                    :attr:`FeatureMethod.view_scale`); training epoch e uses view e % V.
    train_labels:   (M,) int64 in [0, C).
    val_features:   (Nv, d), val_labels (Nv,): the few-shot validation split, the only
                    data used for epoch selection and hyper-parameter search.
    classifiers:    name -> (d, C) normalised text classifier. "positive" is always there
                    (the zero-shot classifier W); "negative" (DualAdapter's negative
                    templates) and "description" (CuPL descriptions) when available.
    logit_scale:    the backbone's s = exp(logit_scale) (about 100 for OpenAI CLIP).
    notes:          facts to carry into the run record (e.g. "no description file: W_d = W_t").
    train_view_norms: (V, M) norms of the raw view features before normalisation (the
                    feature cache stores them); None: the views count as unit-norm.
    shots:          the K of the run (the sampler's, also under label noise, where the
                    per-class counts of the labels vary); None: unknown.
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    train_views: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    classifiers: dict[str, torch.Tensor]
    logit_scale: float
    notes: list[str] = field(default_factory=list)
    train_view_norms: torch.Tensor | None = None
    shots: int | None = None

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
        """(M, d) cache keys F = norm(mean_v x_v): the *raw* view features x_v = n_v * f_v
        (norm n_v, direction f_v) averaged over the V views, normalised once, as the
        official Tip-Adapter (``build_cache_model``) and DualAdapter (``extract_features``)
        codes do. A view with a larger raw norm weighs more than under
        ``norm(mean_v f_v)``; the two agree when every view has the same norm."""
        views = self.train_views
        if self.train_view_norms is not None:
            views = views * self.train_view_norms[..., None].to(views)
        return F.normalize(views.mean(0), dim=-1)

    @property
    def cache_values(self) -> torch.Tensor:
        """(M, C) one-hot cache values L."""
        return F.one_hot(self.train_labels, self.num_classes).float()

    def view(self, epoch: int) -> torch.Tensor:
        """(M, d) the augmented view used at a given epoch."""
        return self.train_views[epoch % self.train_views.shape[0]]


class FeatureMethod(ABC):
    """A method trained on cached features. Subclasses define ``name`` and ``Options``."""

    name: ClassVar[str]
    #: False for methods that use no few-shot image (zero-shot CLIP): the run layer then
    #: extracts no training features.
    uses_training_images: ClassVar[bool] = True
    #: The positive templates when ``RunConfig.templates`` is None: ``"default"`` (the
    #: dataset's, an ensemble where it has one) or ``"single"`` (CoOp's hand-made prompt).
    default_templates: ClassVar[str] = "default"
    #: The options of the method's documented fixed setting, which uses no validation data
    #: (``RunConfig(val="none")`` runs it with them); None: it needs validation data.
    no_val_options: ClassVar[dict | None] = None

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**check_method_options(self.name, self.Options, options))

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

    def view_scale(self) -> tuple[float, float]:
        """Random-resized-crop scale range of the augmented views this method uses (the run
        layer caches views per scale): Tip-Adapter's (0.5, 1) unless a method says else."""
        return CACHE_CROP_SCALE

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)
