"""Deep visual prompts for open_clip Vision Transformers (VPT-deep as used by APEX).

At each of the first J transformer layers, n learnable tokens ``p_j`` (n = 2 in APEX,
init N(0, 0.02)) are appended to the token sequence; layer j replaces the n outputs of
the previous layer's prompt tokens by its own:

    x_0 = ln_pre([cls + e_0; patches + e_1..N; p_1])                (B, 1 + N + n, w)
    x_1 = Block_1(x_0)
    x_j = Block_j([x_{j-1}[:, :1 + N]; p_j])    for 1 < j <= J   (replace the prompt outputs)
    x_j = Block_j(x_{j-1})                      for j > J        (the last outputs go along)
    z   = ln_post(x_L[:, 0]) @ proj                                   (B, d)

This is the official APEX/IVLP layout: the first layer's prompts are appended after the
positional embedding and pass through ``ln_pre``; deeper prompts are inserted as they are.
The prompt outputs are removed before pooling. :func:`encode_image` reproduces open_clip's
``VisionTransformer.forward`` (conv1 patches, class and positional embedding, patch
dropout, ln_pre, resblocks in either batch layout, token or average pooling, ln_post
before or after pooling, proj), so prompts of length 0 give exactly the plain encoder's
output. Attentional pooling (CoCa) is not supported; ResNet image towers have no token
sequence, so they raise :class:`VisualPromptError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # open_clip is imported where it is used: its import takes seconds
    from open_clip.transformer import VisionTransformer


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
    prompts: torch.Tensor | None = None,
    return_tokens: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """open_clip ViT forward with deep prompts ``(J, n, w)`` (None: the plain encoder).

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
    depth = 0 if prompts is None else prompts.shape[0]
    n = 0 if prompts is None else prompts.shape[1]
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
