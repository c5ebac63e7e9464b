"""Deep prompts in both frozen open_clip encoders, and MaPLe's coupling function: the one
building block of APEX, MaPLe and PromptSRC (IVLP) and deep VPT.

Visual side (VPT-deep as in the official IVLP / MaPLe / APEX code). At each of the first J
transformer layers, n learnable tokens ``p_j`` (w wide) are appended to the token sequence;
layer j replaces the n outputs of the previous layer's prompt tokens by its own:

    x_0 = ln_pre([cls + e_0; patches + e_1..N; p_1])                (B, 1 + N + n, w)
    x_1 = Block_1(x_0)
    x_j = Block_j([x_{j-1}[:, :1 + N]; p_j])    for 1 < j <= J   (replace the prompt outputs)
    x_j = Block_j(x_{j-1})                      for j > J        (the last outputs go along)
    z   = ln_post(x_L[:, 0]) @ proj                                   (B, d)

The first layer's prompts are appended after the positional embedding and pass through
``ln_pre``; deeper prompts are inserted as they are. The prompt outputs are removed before
pooling. :func:`encode_image` reproduces open_clip's ``VisionTransformer.forward`` (conv1
patches, class and positional embedding, patch dropout, ln_pre, resblocks in either batch
layout, token or average pooling, ln_post before or after pooling, proj), so prompts of
length 0 give exactly the plain encoder's output. Attentional pooling (CoCa) is not
supported; ResNet image towers have no token sequence, so they raise
:class:`VisualPromptError`.

Text side (the official IVLP / MaPLe text encoder). Layer 1's input is the prompt
``[SOS, c_1..c_n, words, EOT]`` with learnable context ``c`` (a
:class:`~fewclip.prompting.text_prompts.TextPromptLearner`); each deeper layer
j = 2..J replaces the outputs at the context positions 1..n by its own tokens ``q_j``
(n, w_t), without positional embedding:

    y_1 = Block_1(P + E_pos)
    y_j = Block_j([y_{j-1}[:1]; q_j; y_{j-1}[1 + n:]])     for 1 < j <= J
    t   = ln_final(y_L)[eot] @ W_text                                  (d,)

With the causal mask no position sees a later one, so :func:`encode_text` may cut the
sequence after the last EOT as :class:`~fewclip.prompting.text_prompts.TextTower` does.

The official codes draw ``q_j ~ N(0, 0.02)`` (``DEEP_TEXT_INITS`` "official"), so the
prompted text encoder does not start as the plain one. For the same reason (the causal
mask), the hidden states at the context positions 1..n do not depend on the class name:

    q_j = y_{j-1}[1..n] of [SOS, c_1..c_n]        for 1 < j <= J     ("context")

which :func:`context_states` computes once, makes every replacement a no-op at
initialisation: the text features are exactly the plain prompt's (zero-shot CLIP's with
the init phrase), and training starts from there.

MaPLe's coupling (Khattak et al., CVPR 2023): the visual prompts are functions of the text
prompts, ``p_1 = F_1(c)``, ``p_j = F_j(q_j)``, each ``F_j`` a linear map (w_t -> w) of its
own (:class:`Coupling`; the official code clones one randomly initialised map for the
deeper layers, so they start equal).

Shapes: B images, N patches, J prompted layers, n prompt tokens, w / w_t the widths of
the image / text transformer, d the joint dimension.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # open_clip is imported where it is used: its import takes seconds
    from open_clip.transformer import VisionTransformer

    from .text_prompts import TextPromptLearner, TextTower

#: Prompts of the J layers: a (J, n, w) tensor or J tensors (n, w) (e.g. coupled ones).
LayerPrompts = torch.Tensor | Sequence[torch.Tensor]


class VisualPromptError(TypeError):
    """The image tower cannot take visual prompts (not an open_clip ViT)."""


def check_vit(visual: nn.Module) -> VisionTransformer:
    """Return ``visual`` if it is a plain open_clip ViT, else raise a clear error."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise VisualPromptError(
            f"deep visual prompts need a Vision Transformer image tower; this backbone's is "
            f"{type(visual).__name__} (a ResNet has no token sequence to prompt). Use a ViT "
            "backbone such as ViT-B-16 or fewclip-test-vit."
        )
    if visual.attn_pool is not None:
        raise NotImplementedError(
            "visual prompts with attentional pooling (CoCa) are not supported"
        )
    return visual


class DeepVisualPrompts(nn.Module):
    """Learnable prompts (J, n, w): n tokens for each of the first J layers, N(0, 0.02)."""

    def __init__(
        self,
        visual: nn.Module,
        depth: int | None = None,
        length: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        vit = check_vit(visual)
        layers = len(vit.transformer.resblocks)
        depth = layers if depth is None else depth
        if not 0 <= depth <= layers:
            raise ValueError(f"prompt depth J={depth} must be in [0, {layers}] for this ViT")
        width = int(vit.class_embedding.shape[0])
        init = torch.randn(depth, length, width, generator=generator) * 0.02
        self.prompts = nn.Parameter(init.to(vit.class_embedding.device))

    @property
    def depth(self) -> int:
        return self.prompts.shape[0]

    @property
    def length(self) -> int:
        return self.prompts.shape[1]

    def forward(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, d) un-normalised prompted features."""
        return encode_image(visual, images, self.prompts)


def encode_image(
    visual: nn.Module,
    images: torch.Tensor,
    prompts: LayerPrompts | None = None,
    return_tokens: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """open_clip ViT forward with deep prompts ``(J, n, w)`` or J tensors ``(n, w)``
    (None: the plain encoder).

    Returns (B, d) features; with ``return_tokens`` also (B, N, d) patch tokens passed
    through ``ln_post`` and ``proj`` (dense features in the joint space).
    """
    vit = check_vit(visual)
    x = vit.conv1(images)  # (B, w, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, N, w)
    cls = vit.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + vit.positional_embedding.to(x.dtype)
    x = vit.patch_dropout(x)
    depth = 0 if prompts is None else len(prompts)
    n = prompts[0].shape[0] if depth > 0 else 0
    if depth > 0:
        x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    x = vit.ln_pre(x)

    transformer = vit.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # (L, B, w)
    seq_dim = 0 if not transformer.batch_first else 1
    for j, block in enumerate(transformer.resblocks):
        if 0 < j < depth:
            keep = x.narrow(seq_dim, 0, x.shape[seq_dim] - n)
            p = prompts[j].to(x.dtype)
            p = (
                p.unsqueeze(1).expand(-1, x.shape[1], -1)
                if seq_dim == 0
                else p.expand(x.shape[0], -1, -1)
            )
            x = torch.cat([keep, p], dim=seq_dim)
        x = block(x, attn_mask=None)
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # (B, L, w)
    if depth > 0:
        x = x[:, : x.shape[1] - n]

    if vit.final_ln_after_pool:
        pooled, tokens = _global_pool(vit, x)
        pooled = vit.ln_post(pooled)
        tokens = vit.ln_post(tokens)
    else:
        x = vit.ln_post(x)
        pooled, tokens = _global_pool(vit, x)
    if vit.proj is not None:
        pooled = pooled @ vit.proj
        tokens = tokens @ vit.proj
    return (pooled, tokens) if return_tokens else pooled


def _global_pool(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if vit.pool_type == "tok":
        return x[:, 0], x[:, 1:]
    if vit.pool_type == "avg":
        return x[:, 1:].mean(dim=1), x[:, 1:]
    raise NotImplementedError(f"ViT pooling {vit.pool_type!r} is not supported")


# --------------------------------------------------------------------------- text side


#: How the deeper text prompts start: "official" (N(0, 0.02)) or "context" (the context's own
#: hidden states, so the text encoder starts as the plain prompt; see the module docstring).
DEEP_TEXT_INITS = ("official", "context")


class DeepTextPrompts(nn.Module):
    """Learnable text prompts (J - 1, n, w_t) of layers 2..J, N(0, 0.02) unless ``init``
    (J - 1, n, w_t) is given (layer 1's are the context of the prompt learner)."""

    def __init__(
        self,
        width: int,
        depth: int,
        length: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"text prompt depth J={depth} must be at least 1")
        random = torch.randn(depth - 1, length, width, generator=generator) * 0.02
        if init is not None:
            if init.shape != random.shape:
                raise ValueError(
                    f"deep text prompts init has shape {tuple(init.shape)}, expected "
                    f"{tuple(random.shape)} (J - 1, n, w_t)"
                )
            random = init.detach().float().cpu()
        self.prompts = nn.Parameter(random.to(device))


@torch.no_grad()
def context_states(tower: TextTower, sos: torch.Tensor, ctx: torch.Tensor, depth: int):
    """SOS embedding (w_t,) and context (n, w_t) -> (J - 1, n, w_t): the hidden states at the
    context positions 1..n entering layers 2..J of the plain text transformer, i.e. what
    :func:`encode_text` would carry there without deeper prompts. With the causal mask they
    do not depend on what follows the context (the class name), so deeper prompts equal to
    them leave every class's text feature unchanged."""
    if not tower.causal:
        raise ValueError(
            "deep_text_init='context' needs a causal text encoder (the context's hidden "
            "states would depend on the class name); use deep_text_init='official'"
        )
    n = ctx.shape[0]
    cast = tower.transformer.get_cast_dtype()
    x = torch.cat([sos.reshape(1, -1), ctx.to(sos.dtype)]).unsqueeze(0).to(cast)  # (1, 1+n, w)
    x = x + tower.positional_embedding[: 1 + n].to(cast)
    mask = tower.attn_mask[: 1 + n, : 1 + n]
    batch_first = getattr(tower.transformer, "batch_first", True)
    states = []
    for block in list(tower.transformer.resblocks)[: depth - 1]:
        x = block(x if batch_first else x.transpose(0, 1), attn_mask=mask)
        x = x if batch_first else x.transpose(0, 1)
        states.append(x[0, 1:].float())
    if not states:
        return torch.zeros(0, n, ctx.shape[-1], device=ctx.device)
    return torch.stack(states)

    def forward(self) -> torch.Tensor:
        return self.prompts


def deep_text_prompts(
    learner: TextPromptLearner,
    depth: int,
    init: str = "official",
    generator: torch.Generator | None = None,
) -> DeepTextPrompts:
    """The deeper text prompts (J - 1, n, w_t) after the context of ``learner`` (n tokens):
    ``init`` "official" draws them from N(0, 0.02); "context" starts them at the context's
    own hidden states (:func:`context_states`). The random draw is made either way, so the
    draws after it do not depend on ``init``."""
    if init not in DEEP_TEXT_INITS:
        raise ValueError(f"unknown deep_text_init {init!r}; choose one of {DEEP_TEXT_INITS}")
    tower = learner.tower
    states = None
    if init == "context" and depth > 1:
        sos = tower.embed(learner.tokenizer([""]))[0, 0]
        states = context_states(tower, sos, learner.ctx.detach(), depth)
    return DeepTextPrompts(tower.width, depth, learner.n_ctx, tower.device, generator, init=states)


def encode_text(
    tower: TextTower,
    embeddings: torch.Tensor,
    ids: torch.Tensor,
    deeper: LayerPrompts | None = None,
    truncate: bool = True,
) -> torch.Tensor:
    """(N, L, w_t) prompt embeddings + (N, L) ids -> (N, d) un-normalised text features, with
    ``deeper`` (J - 1, n, w_t) prompts replacing positions 1..n at layers 2..J (see the module
    docstring). ``deeper`` None or empty: ``tower.encode`` itself."""
    if deeper is None or len(deeper) == 0:
        return tower.encode(embeddings, ids, truncate=truncate)
    n = deeper[0].shape[0]
    length = tower.truncated_length(ids) if truncate else embeddings.shape[1]
    cast = tower.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast)
    x = x + tower.positional_embedding[:length].to(cast)
    mask = None if tower.attn_mask is None else tower.attn_mask[:length, :length]
    transformer = tower.transformer
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()  # (L, N, w_t)
    seq_dim = 1 if batch_first else 0
    for j, block in enumerate(transformer.resblocks):
        if 0 < j <= len(deeper):
            q = deeper[j - 1].to(x.dtype)
            q = (
                q.expand(x.shape[0], -1, -1)
                if batch_first
                else q.unsqueeze(1).expand(-1, x.shape[1], -1)
            )
            head = x.narrow(seq_dim, 0, 1)
            tail = x.narrow(seq_dim, 1 + n, x.shape[seq_dim] - 1 - n)
            x = torch.cat([head, q, tail], dim=seq_dim)
        x = block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    x = tower.ln_final(x)
    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, ids[:, :length], tower.pool_type, eos_token_id=tower.eos_id)
    if tower.text_projection is not None:
        if isinstance(tower.text_projection, nn.Linear):
            x = tower.text_projection(x)
        else:
            x = x @ tower.text_projection
    return x


# --------------------------------------------------------------------------- MaPLe


class Coupling(nn.Module):
    """MaPLe's vision-language coupling functions F_1..F_J: linear maps w_t -> w.

    ``F_1`` (the official ``proj``) maps the prompt context ``c`` (n, w_t) to the first
    visual prompts; ``F_2..F_J`` (``compound_prompt_projections``) map the deeper text
    prompts. As in the official code the deeper maps are copies of one randomly initialised
    ``nn.Linear`` (PyTorch's default init), so they start equal; ``F_1`` is drawn on its own.
    """

    def __init__(self, text_width: int, vision_width: int, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MaPLe prompt depth J={depth} must be at least 1")
        self.first = nn.Linear(text_width, vision_width)
        single = nn.Linear(text_width, vision_width)
        self.deeper = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    @property
    def depth(self) -> int:
        return 1 + len(self.deeper)

    def forward(self, context: torch.Tensor, deeper_text: LayerPrompts) -> list[torch.Tensor]:
        """c (n, w_t) and (J - 1, n, w_t) text prompts -> J visual prompts (n, w)."""
        return [self.first(context), *(f(q) for f, q in zip(self.deeper, deeper_text, strict=True))]
