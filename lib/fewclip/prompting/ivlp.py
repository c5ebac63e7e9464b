"""What MaPLe and PromptSRC share: deep prompts in both encoders that start from an init
phrase (IVLP, independent vision-language prompting, and MaPLe's coupled variant).

A learner of such a method has ``text_features(classnames) -> (C, d)`` and
``image_features(visual, images) -> (B, d)`` (both un-normalised, through the prompted
encoders); :class:`IVLPMethod` gives the method around it the options they share (the init
phrase, the deeper text prompts' init), the prompted logits

    t = norm(g(prompts_c; q))       (C, d)        z = norm(f(x; p))       (B, d)
    logits = s z t^T                (B, C)        s: the model's own logit scale

and the run note naming the init phrase. The context (layer 1's text prompt) follows the
official rule of both codes (:func:`context_learner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import BACKBONE_WORDS, Backbone, init_phrase, words_note
from .deep_prompts import DEEP_TEXT_INITS
from .encoder_base import Images, image_batches
from .reencoding import ReencodingMethod, ReencodingOptions
from .text_prompts import TextPromptLearner, TextTower, count_tokens


def context_learner(
    backbone: Backbone, init: str | None, n_ctx: int, generator: torch.Generator
) -> TextPromptLearner:
    """The official rule: the phrase's first ``n_ctx`` tokens when n_ctx <= 4 and the phrase
    has that many tokens, else ``n_ctx`` random N(0, 0.02) vectors (shown as "X X ...")."""
    tower = TextTower(backbone.model)
    use_phrase = bool(init) and n_ctx <= 4 and n_ctx <= count_tokens(backbone.tokenizer, init)
    return TextPromptLearner(
        tower,
        backbone.tokenizer,
        init=init if use_phrase else None,
        n_ctx=n_ctx,
        generator=generator,
    )


@dataclass
class IVLPOptions(ReencodingOptions):
    init: str = BACKBONE_WORDS  # "backbone", "official" ("a photo of a") or a phrase
    deep_text_init: str = "official"  # q_j: "official" N(0, 0.02) or "context" (zero-shot)


class IVLPMethod(ReencodingMethod):
    """A re-encoding method whose learner prompts both encoders from an init phrase."""

    Options = IVLPOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.deep_text_init not in DEEP_TEXT_INITS:
            raise ValueError(
                f"{self.name}: unknown deep_text_init {self.options.deep_text_init!r}; choose "
                f"one of {DEEP_TEXT_INITS}"
            )

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the init phrase comes from the backbone (the run key then includes it)."""
        return self.options.init == BACKBONE_WORDS

    def phrase(self, backbone: Backbone) -> str | None:
        """The init phrase for ``backbone`` (:func:`fewclip.backbones.init_phrase`)."""
        self.words = backbone.words
        return init_phrase(backbone.words, self.options.init)

    def features(
        self, backbone: Backbone, images: torch.Tensor, classnames: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised prompted text features t (C, d) and image features z (B, d)."""
        learner = self._check_fitted()
        t = F.normalize(learner.text_features(classnames).float(), dim=-1)
        z = F.normalize(learner.image_features(backbone.model.visual, images).float(), dim=-1)
        return t, z

    @torch.no_grad()
    def logits(self, backbone: Backbone, images: Images, classnames: Sequence[str]) -> torch.Tensor:
        learner = self._check_fitted()
        with backbone.autocast():
            t = F.normalize(learner.text_features(classnames).float(), dim=-1)
        out = []
        for batch in image_batches(backbone, images):
            with backbone.autocast():
                z = learner.image_features(backbone.model.visual, batch.to(backbone.device))
            out.append(backbone.logit_scale * F.normalize(z.float(), dim=-1) @ t.T)
        return torch.cat(out)

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        result.notes.append(words_note(self.name, self.words, self.options.init))
        return result
