"""Dense image tokens in the joint image-text space, projected like the global feature.

Methods that attend over image content (TOMM's patch TFT and attention CTP) need one
d-dimensional feature per image location, comparable with the class text features:

- ViT (open_clip ``VisionTransformer``): the patch tokens of the last block through the
  same ``ln_post`` and ``proj`` as the class token
  (:func:`fewclip.prompting.visual_prompts.encode_image` with ``return_tokens``);
  T = (H / patch)^2 tokens on a square grid.
- ResNet (open_clip ``ModifiedResNet``): the attention pool's spatial tokens, each passed
  through the pool's value and output projections (as MaskCLIP does)::

      x_j   = layer4(x)[:, :, j] + pos_{j+1}                 (B, w) for each of T = h * w
      p_j   = c_proj(v_proj(x_j))                           (B, d)
      pool  = c_proj(concat_h sum_j a_hj v_proj_h(x_j))     the global feature

  With one attention head the global feature is exactly the convex combination
  sum_j a_j p_j (plus the mean token's share), so p_j lives in the global feature's space.

Other image towers raise :class:`PatchTokenError` (one sentence: what and how to fix).
Shapes: B images, T tokens, d joint dimension.
"""

from __future__ import annotations

import math

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from .visual_prompts import VisualPromptError, encode_image


class PatchTokenError(VisualPromptError):
    """The image tower gives no dense tokens (neither an open_clip ViT nor ResNet)."""


def image_tokens(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) preprocessed images -> (pooled (B, d), tokens (B, T, d)), unnormalised.

    ``pooled`` is the tower's usual output (``model.encode_image``)."""
    if isinstance(visual, VisionTransformer):
        return encode_image(visual, images, return_tokens=True)
    if isinstance(visual, ModifiedResNet):
        return _resnet_tokens(visual, images)
    raise PatchTokenError(
        f"this backbone's image tower ({type(visual).__name__}) gives no patch tokens; use an "
        "open_clip ViT (e.g. ViT-B-16, tiny-emoji-vit) or ResNet (e.g. RN50, tiny-emoji-rn)."
    )


def token_grid(num_tokens: int) -> tuple[int, int]:
    """The (rows, columns) of ``num_tokens`` square-grid tokens (row-major order)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side, side


def _resnet_tokens(visual: ModifiedResNet, images: torch.Tensor):
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    pooled = pool(x)
    spatial = x.flatten(2).transpose(1, 2)  # (B, T, w)
    spatial = spatial + pool.positional_embedding[1:].to(spatial.dtype)
    tokens = pool.c_proj(pool.v_proj(spatial))
    return pooled, tokens
