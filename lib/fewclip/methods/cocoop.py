"""CoCoOp: conditional context optimisation (Zhou et al., CVPR 2022, arXiv 2203.05557).

A Meta-Net turns each image into a bias added to every context token, so the prompt of
every class depends on the image:

    pi(x)     = W_2 ReLU(W_1 f(x) + b_1) + b_2        W_1: d -> d/16, W_2: d/16 -> w
    t_c(x)    = g([SOS, v_1 + pi(x), ..., v_M + pi(x), w_c, ".", EOT])      (d,)
    logits_c  = s * f(x) . norm(t_c(x))
    loss      = CE(logits, y)

Defaults follow the official config (vit_b16_c4_ep10_batch1_ctxv1): M = 4 initialised
from the backbone's own words (``init="backbone"``: "a photo of a" for OpenAI CLIP, the
official phrase; "an emoji of" for fewclip's tiny emoji models; ``init="official"``: "a
photo of a" whatever the backbone; :func:`fewclip.backbones.init_phrase`), SGD lr 0.002
(momentum 0.9, weight decay 5e-4), cosine per epoch after 1 constant warm-up epoch at 1e-5,
batch 1, 10 epochs. Each step runs B x C prompts through
the text encoder as one batch (the official code loops over images). The image encoder
is frozen, so image features are cached as for CoOp. Selection on val by default
(``selection="last"``: the official behaviour). As in the official code, M counts the
words of ``init`` (``ctx_count="tokens"``: its BPE tokens).

Meta-Net init (``meta_init``): ``"official"`` (the default) keeps PyTorch's default init of
both layers, as the official code, so pi(x) is a random bias from the first image on and
CoCoOp does not start at zero-shot CLIP; ``"zero"`` sets W_2 = 0 and b_2 = 0, so
pi(x) = 0 and the first logits are zero-shot's with the init phrase (the gradient still
reaches W_2 through ReLU(W_1 f(x) + b_1), which stays random). The official init is not a
bug and is as large on OpenAI CLIP (docs/constants.md), so it stays the default;
docs/faithfulness.md gives the measured effect of ``"zero"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BACKBONE_WORDS, Backbone, init_phrase
from ..prompting.encoder_base import FeaturePromptMethod, FeaturePromptOptions
from ..prompting.text_prompts import TextPromptLearner, TextTower
from .base import register_method

#: CoCoOp's Meta-Net init: "official" (PyTorch's default) or "zero" (last layer at zero).
META_INITS = ("official", "zero")


class MetaNet(nn.Sequential):
    """CoCoOp's Meta-Net: Linear(d, d/16) - ReLU - Linear(d/16, w)."""

    def __init__(self, dim: int, width: int, reduction: int = 16) -> None:
        hidden = max(1, dim // reduction)
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, width))


class CoCoOpLearner(nn.Module):
    def __init__(self, prompt: TextPromptLearner, meta_net: MetaNet) -> None:
        super().__init__()
        self.prompt = prompt
        self.meta_net = meta_net


def image_conditioned_logits(
    prompt: TextPromptLearner,
    bias: torch.Tensor,
    features: torch.Tensor,
    classnames: Sequence[str],
    logit_scale: float,
) -> torch.Tensor:
    """bias (B, w) or (B, C, w), features (B, d) -> (B, C) logits, B x C prompts batched."""
    text = F.normalize(prompt(classnames, bias=bias).float(), dim=-1)  # (B, C, d)
    return logit_scale * torch.einsum("bd,bcd->bc", features.float(), text)


@register_method
class CoCoOp(FeaturePromptMethod):
    """Context tokens shifted by an image-conditioned bias from a small Meta-Net."""

    name = "cocoop"
    init_option = "init"

    @dataclass
    class Options(FeaturePromptOptions):
        n_ctx: int | None = None  # None: every token of ``init``
        init: str | None = BACKBONE_WORDS  # "backbone", "official", a phrase, None: random
        meta_reduction: int = 16
        batch_size: int = 1
        epochs: int | None = 10
        eval_chunk: int = 64  # images per text-encoder batch at inference
        ctx_count: str = "words"  # init phrase: M = its words (official) or "tokens"
        meta_init: str = "official"  # Meta-Net: "official" (random) or "zero" (pi(x) = 0)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.meta_init not in META_INITS:
            raise ValueError(
                f"cocoop: unknown meta_init {self.options.meta_init!r}; choose one of {META_INITS}"
            )

    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        o = self.options
        tower = TextTower(backbone.model)
        self.words = backbone.words
        prompt = TextPromptLearner(
            tower,
            backbone.tokenizer,
            init=init_phrase(backbone.words, o.init),
            n_ctx=o.n_ctx,
            generator=generator,
            count=o.ctx_count,
        )
        meta = MetaNet(backbone.embed_dim, tower.width, o.meta_reduction).to(backbone.device)
        if o.meta_init == "zero":
            with torch.no_grad():
                meta[-1].weight.zero_()
                meta[-1].bias.zero_()
        self.learner = CoCoOpLearner(prompt, meta)
        self.logit_scale = backbone.logit_scale

    def feature_logits(
        self, features: torch.Tensor, classnames: Sequence[str], tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        learner = self._check_fitted()
        out = []
        for chunk in features.split(
            self.options.eval_chunk if not learner.training else len(features)
        ):
            bias = learner.meta_net(chunk)
            out.append(
                image_conditioned_logits(learner.prompt, bias, chunk, classnames, self.logit_scale)
            )
        return torch.cat(out)
