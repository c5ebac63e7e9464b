"""ProGrad: prompt-aligned gradient (Zhu, Niu, Han, Wu, Zhang; ICCV 2023, arXiv 2205.14865).

CoOp's prompt (:class:`~fewclip.prompting.text_prompts.TextPromptLearner`) trained with
the cross-entropy gradient projected so that it never works against the zero-shot model:

    p_zs   = softmax(s * f @ w^T / T)     w_c = norm(g(template.format(c))), frozen  (B, C)
    L_ce   = CE(s * f @ t^T, y)
    L_kl   = T^2 * mean_b sum_c -p_zs log softmax(s * f @ t^T / T)      (KL up to a constant)
    G_ce, G_kl = dL_ce/dv, dL_kl/dv                                     per parameter v
    G      = G_ce                                       if G_ce . G_kl >= 0
           = G_ce - lambda (G_ce . G_kl / |G_kl|^2) G_kl   otherwise  (lambda = 1: the part
                                                        of G_ce that opposes G_kl removed)

and the optimiser steps along G (:func:`prograd_gradients`). Inference uses the learned
prompt alone.

Defaults follow the official code (BeierZhu/Prompt-align, ``configs/trainers/ProGrad``):
M = 16 context vectors, the last ones initialised from the words of the dataset's
hand-crafted template ("a photo of a" of "a photo of a {}.") and the first ones at zero
(the prompt reads "X X ... X a photo of a {class}."), lambda = 1.0, T = 1.0, SGD lr 0.002
(momentum 0.9, weight decay 5e-4), cosine per epoch after 1 constant warm-up epoch at 1e-5,
batch 32. Epochs per protocol (the option ``protocol``, filled in by the run layer): few-shot,
cross-dataset and domain generalisation use CoOp's schedule (``rn50_ep50`` for 1 shot,
``rn50_ep100`` for 2 / 4, ``rn50`` (200) for 8 / 16; the official domain-generalisation
models are the 4-shot ImageNet ones); base-to-new uses ``rn50_ep100`` (100 epochs; the
official script trains it on 4 shots: the run's ``shots`` decides). The README's lambda =
0.8 for 8 / 16 shots on Flowers102, DTD and EuroSAT is one option away (``weight``).

Differences (each an option): on a dataset outside the official template table (ProGrad's
``CUSTOM_TEMPLATES``) the template is the backbone's own (``template``), and the init
phrase follows the template (``init``: "backbone", "official" or a phrase instead); image
features are cached (``views``); the best epoch is chosen on val (``selection="last"``: the
official last epoch). The gradients of both losses are taken with ``torch.autograd.grad``
and the step runs on a surrogate whose gradient is G and whose value is L_ce.

The zero vectors before the phrase put the initial prompt far from zero-shot (the official
code does this on OpenAI CLIP too: its README and base-to-new script set N_CTX = 16 for
every dataset, with CTX_INIT on); ``n_ctx="words"`` (M = the phrase's words, no zero
vectors) starts at zero-shot exactly (measured effect: docs/faithfulness.md).
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
    PROGRAD_TEMPLATES,
    dataset_template,
    hand_crafted_features,
    resolve_phrase,
    template_phrase,
    template_reads_backbone,
)
from ..prompting.text_prompts import PLACEHOLDER, TextPromptLearner, TextTower, count_words
from .base import register_method
from .coop import coop_epochs

#: Base-to-new's official config is ``rn50_ep100`` whatever the shots.
BASE_TO_NEW_EPOCHS = 100


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """L_kl = T^2 mean_b sum_c -softmax(teacher / T) log softmax(logits / T); (B, C) each."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    log_prob = F.log_softmax(logits / temperature, dim=-1)
    return -(target * log_prob).sum(-1).mean() * temperature**2


def prograd_gradients(
    params: Sequence[torch.Tensor], ce: torch.Tensor, kl: torch.Tensor, weight: float = 1.0
) -> list[torch.Tensor]:
    """Per parameter: G_ce with ``weight`` times its component along -G_kl removed where the
    two gradients disagree (G_ce . G_kl < 0); G_ce unchanged otherwise."""
    g_kl = torch.autograd.grad(kl, params, retain_graph=True, allow_unused=True)
    g_ce = torch.autograd.grad(ce, params, allow_unused=True)
    out = []
    for p, a, b in zip(params, g_ce, g_kl, strict=True):
        a = torch.zeros_like(p) if a is None else a
        if b is not None:
            norm = torch.linalg.vector_norm(b)
            if norm > 0:
                b_hat = b / norm
                dot = (a * b_hat).sum()
                if dot < 0:
                    a = a - weight * dot * b_hat
        out.append(a)
    return out


def with_gradients(
    value: torch.Tensor, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params`` is ``grads``."""
    linear = sum((p * g.detach()).sum() for p, g in zip(params, grads, strict=True))
    return value.detach() + linear - linear.detach()


def padded_phrase_learner(
    tower: TextTower, tokenizer, phrase: str, n_ctx: int, generator: torch.Generator
) -> TextPromptLearner:
    """ProGrad's prompt: "X ... X {phrase} {class}." with M = ``n_ctx`` learnable tokens, the
    last ``words(phrase)`` from the phrase's token embeddings, the others zero."""
    phrase = phrase.replace("_", " ")
    words = count_words(phrase)
    if words > n_ctx:
        raise ValueError(
            f"prograd: n_ctx={n_ctx} is shorter than the {words} words of the init phrase "
            f"{phrase!r}; use n_ctx >= {words}"
        )
    context = " ".join([PLACEHOLDER] * (n_ctx - words) + [phrase])
    learner = TextPromptLearner(tower, tokenizer, init=context, n_ctx=n_ctx, generator=generator)
    with torch.no_grad():
        learner.ctx[: n_ctx - words] = 0.0
    return learner


@register_method
class ProGrad(FeaturePromptMethod):
    """CoOp whose cross-entropy gradient is projected to agree with zero-shot CLIP's."""

    name = "prograd"
    no_val_options: ClassVar[dict] = {"selection": "last"}  # fixed epochs, the last kept

    @dataclass
    class Options(FeaturePromptOptions):
        n_ctx: int | str = 16  # M; "words": the init phrase's words (starts at zero-shot)
        init: str | None = None  # None: the template's words; "backbone", "official", a phrase
        template: str | None = None  # None: the official table, else the backbone's template
        weight: float = 1.0  # lambda (LOSS.LAMBDA)
        temperature: float = 1.0  # T (LOSS.T)
        dataset: str | None = None  # the run's dataset (set by the run layer)
        protocol: str | None = None  # the run's protocol (set by the run layer)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if isinstance(o.n_ctx, str) and o.n_ctx != "words":
            raise ValueError(f"prograd: n_ctx must be a number or 'words', got {o.n_ctx!r}")
        if o.weight < 0 or o.temperature <= 0:
            raise ValueError(
                f"prograd: weight must be >= 0 and temperature > 0, got {o.weight}, {o.temperature}"
            )

    def default_epochs(self, shots: int) -> int:
        if self.options.protocol == "base_to_new":
            return BASE_TO_NEW_EPOCHS
        return coop_epochs(shots)

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the template (and so the init phrase) or the init phrase comes from the
        backbone (the run key then includes its words)."""
        o = self.options
        return o.init == BACKBONE_WORDS or template_reads_backbone(
            o.dataset, o.template, PROGRAD_TEMPLATES
        )

    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        o = self.options
        self.template = dataset_template(backbone, o.dataset, o.template, PROGRAD_TEMPLATES)
        phrase = resolve_phrase(backbone, o.init) if o.init else template_phrase(self.template)
        tower = TextTower(backbone.model)
        n_ctx = count_words(phrase.replace("_", " ")) if o.n_ctx == "words" else o.n_ctx
        self.learner = padded_phrase_learner(tower, backbone.tokenizer, phrase, n_ctx, generator)
        self.logit_scale = backbone.logit_scale
        self.zero_shot = hand_crafted_features(backbone, classnames, self.template)

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
        o = self.options
        features = features.float()
        logits = self.feature_logits(features, classnames)
        teacher = self.logit_scale * features @ self.zero_shot.to(features.device).T
        ce = F.cross_entropy(logits, labels)
        kl = distillation_loss(logits, teacher, o.temperature)
        params = [p for p in self._check_fitted().parameters() if p.requires_grad]
        return with_gradients(ce, params, prograd_gradients(params, ce, kl, o.weight))

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        result.notes.append(
            f"prograd: prompt {self.learner.context_words!r} (placeholders start at zero), "
            f"zero-shot template {self.template!r}, lambda {self.options.weight}"
        )
        return result
