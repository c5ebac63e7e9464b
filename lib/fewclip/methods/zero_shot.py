"""Zero-shot CLIP (Radford et al., 2021): the text classifier alone.

    W      (d, C): for each class, every template filled with the class name is encoded,
                   normalised, averaged and normalised again (prompt ensembling; one
                   template gives the single-template classifier)
    logits = s * f @ W                                   f (N, d) normalised, (N, C)

``s`` is the backbone's own logit scale (about 100 for OpenAI CLIP, about 30 for
fewclip's tiny models). Which templates build W (the dataset's ensemble, CoOp's single
template, or a list of one's own) is the run configuration's ``templates`` field; the
classifier arrives ready in ``FeatureData.classifiers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import FeatureData, FeatureMethod, FitResult, register_method


@register_method
class ZeroShot(FeatureMethod):
    """``logits = s * f @ W`` with one of the cached text classifiers."""

    name = "zero_shot"
    uses_training_images = False
    no_val_options: ClassVar[dict] = {}  # nothing is chosen on val

    @dataclass
    class Options:
        classifier: str = "positive"  # or "description" (CuPL sentences), if given

    classifier: torch.Tensor | None = None
    logit_scale: float = 1.0

    def fit(self, data: FeatureData, seed: int = 0) -> FitResult:
        name = self.options.classifier
        if name not in data.classifiers:
            raise ValueError(
                f"zero_shot: no {name!r} classifier; available: {sorted(data.classifiers)}"
            )
        self.classifier = data.classifiers[name].float()
        self.logit_scale = float(data.logit_scale)
        return FitResult(chosen={"classifier": name})

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("zero_shot: call fit() before logits()")
        return self.logits_for(features, self.classifier)

    def logits_for(self, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, E): s * f @ W for any (d, E) classifier."""
        return self.logit_scale * features.float() @ classifier.float().to(features.device)
