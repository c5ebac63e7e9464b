"""KgCoOp: knowledge-guided context optimisation (Yao, Zhang, Xu; CVPR 2023, arXiv 2303.13283).

CoOp's prompt (:class:`~fewclip.prompting.text_prompts.TextPromptLearner`) plus a term that
keeps each learned class feature near the frozen-CLIP feature of a hand-crafted prompt:

    t_c    = norm(g([SOS, v_1, ..., v_M, w_c, ".", EOT]))              learned, (C, d)
    w_c    = norm(g(tokenize(template.format(c))))                      frozen, (C, d)
    L_kg   = 1 - (1/C) sum_c cos(t_c, w_c)
    loss   = CE(s * f @ t^T, y) + lambda * L_kg                         lambda = 8

Defaults follow the official scripts (``vit_b16_ep100_ctxv1``, the same config for
base-to-new and for the few-shot / cross-dataset runs of ``xd_train.sh``): M = 4 context
vectors initialised from "a photo of a" (``CTX_INIT`` true; the code fixes the phrase),
lambda = 8.0 (``TRAINER.COOP.W``), SGD lr 0.002 (momentum 0.9, weight decay 5e-4), cosine
per epoch after 1 constant warm-up epoch at 1e-5, batch 128, 100 epochs. The template of
w_c is the official per-dataset one (CoOp's zero-shot table) on the benchmark datasets.

Differences (each an option): ``init="backbone"`` starts from the backbone's own phrase
and, on a dataset outside the official table, w_c uses the backbone's own template
(``template``); both are "a photo of a" for OpenAI CLIP, so nothing changes there
(``init="official"`` / ``template="official"`` force OpenAI's words on any backbone).
Image features are cached (``views``) and the best epoch is chosen on val
(``selection="last"``: the official last epoch), as for :mod:`fewclip.methods.coop`.
The hand-crafted features of the evaluation classes are not used at test time (as in the
official code): KgCoOp's classifier is the learned prompt alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import BACKBONE_WORDS, Backbone
from ..prompting.encoder_base import FeaturePromptMethod, FeaturePromptOptions
from ..prompting.hand_crafted import (
    KGCOOP_TEMPLATES,
    dataset_template,
    hand_crafted_features,
    resolve_phrase,
    template_reads_backbone,
)
from ..prompting.text_prompts import TextPromptLearner, TextTower
from .base import register_method


def knowledge_loss(learned: torch.Tensor, hand_crafted: torch.Tensor) -> torch.Tensor:
    """L_kg = 1 - mean_c cos(t_c, w_c); learned (C, d) (normalised here), hand_crafted (C, d)."""
    return 1.0 - F.cosine_similarity(learned, hand_crafted, dim=-1, eps=1e-7).mean()


@register_method
class KgCoOp(FeaturePromptMethod):
    """CoOp with its class features pulled towards a hand-crafted prompt's (L_kg)."""

    name = "kgcoop"
    init_option = "init"
    no_val_options: ClassVar[dict] = {"selection": "last"}  # fixed epochs, the last kept

    @dataclass
    class Options(FeaturePromptOptions):
        init: str = "backbone"  # "backbone", "official" ("a photo of a") or a phrase
        n_ctx: int | None = None  # None: the phrase's words (4 for "a photo of a")
        weight: float = 8.0  # lambda (official scripts: W = 8.0)
        template: str | None = None  # w_c's template; None: official table, else backbone
        dataset: str | None = None  # the run's dataset (set by the run layer)
        batch_size: int = 128
        epochs: int | None = 100

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.weight < 0:
            raise ValueError(f"kgcoop: weight must be >= 0, got {self.options.weight}")
        if not self.options.init:
            raise ValueError("kgcoop: init must be 'backbone', 'official' or a phrase")

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the init phrase or w_c's template comes from the backbone (the run key then
        includes its words)."""
        o = self.options
        return o.init == BACKBONE_WORDS or template_reads_backbone(
            o.dataset, o.template, KGCOOP_TEMPLATES
        )

    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        o = self.options
        self.words = backbone.words
        self.learner = TextPromptLearner(
            TextTower(backbone.model),
            backbone.tokenizer,
            init=resolve_phrase(backbone, o.init),
            n_ctx=o.n_ctx,
            generator=generator,
        )
        self.logit_scale = backbone.logit_scale
        self.template = dataset_template(backbone, o.dataset, o.template, KGCOOP_TEMPLATES)
        self.hand_crafted = hand_crafted_features(backbone, classnames, self.template)

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, d) normalised text features of the learned prompts."""
        return F.normalize(self._check_fitted()(classnames).float(), dim=-1)

    def feature_logits(
        self, features: torch.Tensor, classnames: Sequence[str], tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.logit_scale * features.float() @ self.text_features(classnames).T

    def loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str],
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text = self.text_features(classnames)
        logits = self.logit_scale * features.float() @ text.T
        return F.cross_entropy(logits, labels) + self.options.weight * knowledge_loss(
            text, self.hand_crafted.to(text.device)
        )

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        result.notes.append(
            f"kgcoop: hand-crafted template {self.template!r}, lambda {self.options.weight}"
        )
        return result
