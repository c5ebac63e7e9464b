"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan; CVPR 2023,
arXiv 2210.03117). Official code: muzairkhattak/multimodal-prompt-learning.

Deep prompts in both encoders, the visual ones coupled to the text ones
(:mod:`fewclip.prompting.deep_prompts`):

    c          = first n tokens of the init phrase (learnable; n = 2: "a photo" of the
                 official "a photo of a", "of a" fixed)
    q_j        ~ N(0, 0.02) (n, w_t)             text prompts of layers j = 2..J
    p_1 = F_1(c),  p_j = F_j(q_j)                 visual prompts, F_j linear w_t -> w
    t_c        = g([SOS, c, "of a", w_c, ".", EOT]; q_2..q_J)          (C, d)
    z          = f(image; p_1..p_J)                                     (B, d)
    loss       = CE(s * norm(z) @ norm(t)^T, y)          s: the model's own logit scale

Official configs (``configs/trainers/MaPLe``), chosen by the run's ``protocol``:

- ``vit_b16_c2_ep5_batch4_2ctx`` (few_shot, base_to_new): SGD lr 0.0035 (momentum 0.9,
  weight decay 5e-4), 5 epochs, batch 4, cosine per epoch after 1 constant warm-up epoch
  at 1e-5, J = 9, n = 2, Dassl's random resized crop + flip;
- ``vit_b16_c2_ep5_batch4_2ctx_cross_datasets`` (cross_dataset, domain_generalisation,
  trained on the source as the official ImageNet source model): lr 0.0026, 2 epochs, J = 3.

Options left at None take these; every given option wins (:meth:`MaPLe.resolved`). J is
capped at the layers of the smaller tower when not given (the tiny models have fewer than
9). As the official ``MultiModalPromptLearner``, the phrase initialises ``c`` only when
n <= 4 (else ``c`` ~ N(0, 0.02)). The phrase is the backbone's own (``init="backbone"``:
:func:`fewclip.backbones.init_phrase`; "a photo of a" for OpenAI CLIP, the official
CTX_INIT; ``init="official"`` keeps it whatever the backbone). ViT only, as in the
paper: a ResNet has no token sequence to prompt (refused with one sentence).

Deeper text prompts (``deep_text_init``): ``"official"`` (the default) draws q_j from
N(0, 0.02) as the official code, so the text encoder does not start as zero-shot CLIP's
(measured: docs/faithfulness.md); ``"context"`` starts q_j at the context's own hidden
states (:func:`fewclip.prompting.deep_prompts.context_states`), so the text features start
exactly at zero-shot's with the init phrase; the visual prompts F_j(q_j) stay random.

Differences from the official code: the best epoch is chosen on the few-shot val split
(``selection="last"``: the official last epoch); the coupling functions map to the
backbone's own widths (the official code hard-codes 512 -> 768, ViT-B/16's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..prompting.deep_prompts import (
    Coupling,
    check_vit,
    deep_text_prompts,
    encode_image,
    encode_text,
)
from ..prompting.ivlp import IVLPMethod, IVLPOptions, context_learner
from ..prompting.reencoding import TRANSFER_PROTOCOLS
from ..prompting.text_prompts import TextTower
from .base import register_method

#: The official configs: options left at None take these values.
CONFIGS = {
    "vit_b16_c2_ep5_batch4_2ctx": {
        "lr": 0.0035,
        "epochs": 5,
        "batch_size": 4,
        "warmup_type": "constant",
        "warmup_lr": 1e-5,
        "depth": 9,
    },
    "vit_b16_c2_ep5_batch4_2ctx_cross_datasets": {
        "lr": 0.0026,
        "epochs": 2,
        "batch_size": 4,
        "warmup_type": "constant",
        "warmup_lr": 1e-5,
        "depth": 3,
    },
}


def tower_depth(backbone: Backbone) -> int:
    """Layers of the smaller of the two transformers (the deepest J both can take)."""
    vit = check_vit(backbone.model.visual)
    tower = TextTower(backbone.model)
    return min(len(vit.transformer.resblocks), len(tower.transformer.resblocks))


class MaPLeLearner(nn.Module):
    """Every learnable parameter of MaPLe: context c, deeper text prompts q, couplings F."""

    def __init__(
        self,
        backbone: Backbone,
        depth: int,
        n_ctx: int,
        init: str,
        generator: torch.Generator,
        deep_text_init: str = "official",
    ) -> None:
        super().__init__()
        vit = check_vit(backbone.model.visual)
        self.text = context_learner(backbone, init, n_ctx, generator)
        tower = self.text.tower
        self.deep_text = deep_text_prompts(self.text, depth, deep_text_init, generator)
        width = int(vit.class_embedding.shape[0])
        self.coupling = Coupling(tower.width, width, depth).to(backbone.device)

    @property
    def depth(self) -> int:
        return self.coupling.depth

    def visual_prompts(self) -> list[torch.Tensor]:
        """J visual prompts (n, w): p_1 = F_1(c), p_j = F_j(q_j)."""
        return self.coupling(self.text.ctx, self.deep_text.prompts)

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, d) un-normalised text features of the deep-prompted text encoder."""
        prompts = self.text.class_prompts(classnames)
        embeddings = prompts.assemble(self.text.ctx)
        return encode_text(self.text.tower, embeddings, prompts.ids, self.deep_text.prompts)

    def image_features(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) un-normalised features of the deep-prompted image encoder."""
        return encode_image(visual, images, self.visual_prompts())


@register_method
class MaPLe(IVLPMethod):
    """Multi-modal deep prompts, the visual ones coupled to the text ones."""

    name = "maple"
    #: the official setting: fixed epochs, the last kept (``RunConfig(val="none")``)
    no_val_options: ClassVar[dict] = {"selection": "last"}
    CONFIGS = CONFIGS

    @dataclass
    class Options(IVLPOptions):
        depth: int | None = None  # J; None: 9 (cross-dataset config: 3), capped at the layers
        n_ctx: int = 2

    def config_name(self) -> str:
        if self.options.protocol in TRANSFER_PROTOCOLS:
            return "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
        return "vit_b16_c2_ep5_batch4_2ctx"

    def build(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        generator: torch.Generator,
        settings: dict[str, Any],
    ) -> None:
        depth, layers = settings["depth"], tower_depth(backbone)
        if self.options.depth is None:
            depth = min(depth, layers)
        if not 1 <= depth <= layers:
            raise ValueError(
                f"maple: depth must be in [1, {layers}] for this backbone, got {depth}"
            )
        o = self.options
        phrase = self.phrase(backbone)
        self.learner = MaPLeLearner(backbone, depth, o.n_ctx, phrase, generator, o.deep_text_init)

    def train_loss(
        self, backbone: Backbone, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        t, z = self.features(backbone, images, self.train_classnames)
        return F.cross_entropy(backbone.logit_scale * z @ t.T, labels)

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        result.chosen["depth"] = self._check_fitted().depth
        return result
