"""CoOp: context optimisation (Zhou, Yang, Loy, Liu; IJCV 2022, arXiv 2109.01134).

The words of the prompt become M learnable vectors (:mod:`fewclip.prompting.text_prompts`):

    t_c    = g([SOS, v_1, ..., v_M, w_c, ".", EOT])       frozen text encoder g, (d,)
    logits = s * f @ norm(T)^T                            f (B, d) normalised, T (C, d)
    loss   = CE(logits, y)

Defaults follow the official code (Dassl configs): M = 16 random N(0, 0.02) vectors
(``init="a photo of a"`` takes M = 4 from its word embeddings), unified context
(``class_specific=True`` is CoOp's CSC), class token at the end (``class_token_position``
"middle" / "front" as in the official code), SGD lr 0.002 (momentum
0.9, weight decay 5e-4), cosine per epoch after 1 constant warm-up epoch at 1e-5, batch
32, 200 epochs for 8/16 shots, 100 for 2/4, 50 for 1 (``epochs`` overrides).

Speed: the image encoder is frozen, so image features are encoded once (``views``
augmented views; epoch e uses view e % V) and each step runs only the text encoder on the
C class prompts; ``cache_images=False`` re-encodes images every step like the official
code. Differences from the official code: the best epoch is selected on the few-shot val
split (``selection="last"`` keeps the last epoch, as the official code does); with the
default 10 cached views, augmentations repeat every 10 epochs (``views=None`` draws a
fresh view per epoch, as the official code does).

Init phrase: ``init="backbone"`` starts from the backbone's own words (``Backbone.words``:
"a photo of a" for OpenAI CLIP, "an emoji of" for fewclip's tiny emoji models),
``init="official"`` from the official codes' "a photo of a" whatever the backbone, any
other phrase from itself (:func:`fewclip.backbones.init_phrase`). As the official
``PromptLearner``: M is the phrase's number of words
(``len(init.split(" "))``), so a phrase with a multi-token word keeps its last tokens
fixed (``ctx_count="tokens"`` makes every token learnable); CSC is ignored when a phrase
is given (``csc_init="ignore"``, recorded in the run notes; ``csc_init="copy"`` gives each
class its own copy of the phrase, what fewclip did before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import Backbone, init_phrase
from ..prompting.encoder_base import FeaturePromptMethod, FeaturePromptOptions
from ..prompting.text_prompts import (
    CLASS_TOKEN_POSITIONS,
    CONTEXT_COUNTS,
    TextPromptLearner,
    TextTower,
)
from .base import register_method

#: What CSC does with an init phrase: "ignore" (official: unified context) or "copy".
CSC_INIT = ("ignore", "copy")


def coop_epochs(shots: int) -> int:
    """CoOp's epochs per shot count: 200 for 8/16 shots, 100 for 2/4, 50 for 1."""
    if shots >= 8:
        return 200
    if shots >= 2:
        return 100
    return 50


@register_method
class CoOp(FeaturePromptMethod):
    """Learnable context vectors shared by all classes (or class-specific)."""

    name = "coop"
    no_val_options: ClassVar[dict] = {"selection": "last"}  # fixed epochs, the last kept
    init_option = "init"

    @dataclass
    class Options(FeaturePromptOptions):
        n_ctx: int | None = None  # None: 16 (random init) or every token of ``init``
        init: str | None = None  # None: random; "backbone", "official" or a phrase
        class_specific: bool = False
        batch_size: int = 32
        ctx_count: str = "words"  # init phrase: M = its words (official) or "tokens"
        class_token_position: str = "end"  # "end" / "middle" / "front" (official options)
        csc_init: str = "ignore"  # CSC with an init phrase: "ignore" (official) or "copy"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        for option, value, valid in (
            ("csc_init", o.csc_init, CSC_INIT),
            ("ctx_count", o.ctx_count, CONTEXT_COUNTS),
            ("class_token_position", o.class_token_position, CLASS_TOKEN_POSITIONS),
        ):
            if value not in valid:
                raise ValueError(f"coop: unknown {option} {value!r}; choose one of {valid}")

    def default_epochs(self, shots: int) -> int:
        return coop_epochs(shots)

    @property
    def class_specific(self) -> bool:
        """Whether the context is per class (CSC), after the official rule for init phrases."""
        o = self.options
        return o.class_specific and not (o.init and o.csc_init == "ignore")

    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        o = self.options
        self.words = backbone.words
        self.learner = TextPromptLearner(
            TextTower(backbone.model),
            backbone.tokenizer,
            init=init_phrase(backbone.words, o.init),
            n_ctx=o.n_ctx,
            class_specific=self.class_specific,
            classnames=classnames,
            generator=generator,
            count=o.ctx_count,
            position=o.class_token_position,
        )
        self.logit_scale = backbone.logit_scale

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        if self.options.class_specific and not self.class_specific:
            result.notes.append(
                "coop: class_specific ignored because an init phrase is given (as the "
                "official PromptLearner does; csc_init='copy' copies the phrase per class)"
            )
        return result

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, d) normalised text features of the learned prompts."""
        return F.normalize(self._check_fitted()(classnames).float(), dim=-1)

    def feature_logits(
        self, features: torch.Tensor, classnames: Sequence[str], tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.logit_scale * features @ self.text_features(classnames).T
