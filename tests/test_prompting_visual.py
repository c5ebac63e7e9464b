"""Deep visual prompts: the prompt-free path is open_clip's ViT forward, exactly."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import Transformer, VisionTransformer

from fewclip.prompting.visual_prompts import (
    DeepVisualPrompts,
    VisualPromptError,
    encode_image,
)


def images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_zero_length_prompts_reproduce_plain_features(test_vit):
    visual = test_vit.model.visual
    x = images()
    with torch.no_grad():
        plain = test_vit.model.encode_image(x)
        assert torch.equal(encode_image(visual, x), plain)
        assert torch.equal(encode_image(visual, x, torch.zeros(2, 0, 32)), plain)
        assert torch.equal(encode_image(visual, x, torch.zeros(0, 2, 32)), plain)
        empty = DeepVisualPrompts(visual, depth=2, length=0)
        assert torch.equal(empty(visual, x), plain)


def vit_variant(**kw):
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32,
        patch_size=8,
        width=32,
        layers=3,
        heads=2,
        mlp_ratio=2.0,
        output_dim=16,
        **kw,
    ).eval()


@pytest.mark.parametrize(
    "kw",
    [
        {"pool_type": "avg"},
        {"final_ln_after_pool": True},
        {"no_ln_pre": True, "ls_init_value": 0.1},
        {"patch_dropout": 0.5},  # inactive in eval mode, as in open_clip
    ],
)
def test_other_open_clip_vit_layouts(kw):
    vit = vit_variant(**kw)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(encode_image(vit, x), vit(x), atol=1e-6, rtol=1e-5)


def test_sequence_first_transformer():
    """Older open_clip runs the ViT blocks on (L, B, w); prompts must go on the right axis."""
    vit = vit_variant()
    batch_first = vit.transformer
    seq_first = Transformer(32, 3, 2, mlp_ratio=2.0, batch_first=False)
    seq_first.load_state_dict(batch_first.state_dict())
    x = images()
    prompts = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = encode_image(vit, x, prompts)
        vit.transformer = seq_first.eval()
        torch.testing.assert_close(vit(x), encode_image(vit, x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(encode_image(vit, x, prompts), expected, atol=1e-5, rtol=1e-5)


def test_prompts_change_features_at_every_prompted_layer(test_vit):
    visual = test_vit.model.visual
    prompts = DeepVisualPrompts(visual, generator=torch.Generator().manual_seed(0))
    assert prompts.prompts.shape == (2, 2, 32)  # J = every layer by default, 2 tokens
    assert 0.01 < prompts.prompts.std().item() < 0.03
    x = images()
    with torch.no_grad():
        plain = test_vit.model.encode_image(x)
        out = prompts(visual, x)
        assert not torch.allclose(out, plain)
        before = out.clone()
        # the second layer's prompts replace the first's (a constant shift would be
        # removed by the LayerNorm, so perturb with noise)
        prompts.prompts[1] += torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(prompts(visual, x), before)
    prompts(visual, x).sum().backward()
    assert prompts.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in visual.parameters())


def test_tokens_are_projected_patch_tokens(test_vit):
    pooled, tokens = encode_image(test_vit.model.visual, images(), return_tokens=True)
    assert pooled.shape == (3, 32) and tokens.shape == (3, 16, 32)  # 4x4 patches of 8 px


def test_depth_is_checked_and_resnets_raise(test_vit, test_rn):
    with pytest.raises(ValueError, match="depth"):
        DeepVisualPrompts(test_vit.model.visual, depth=3)
    with pytest.raises(VisualPromptError, match="ResNet"):
        DeepVisualPrompts(test_rn.model.visual)
    with pytest.raises(VisualPromptError):
        encode_image(test_rn.model.visual, images())


def test_layout_matches_a_hand_written_vpt_deep_forward(test_vit):
    """Layer 0 prompts go in before ln_pre; layer 1 prompts replace their outputs."""
    vit = test_vit.model.visual
    x = images()
    p = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(3)) * 0.5
    with torch.no_grad():
        tokens = vit.conv1(x).flatten(2).transpose(1, 2)
        cls = vit.class_embedding.expand(3, 1, -1)
        seq = torch.cat([cls, tokens], 1) + vit.positional_embedding
        seq = vit.ln_pre(torch.cat([seq, p[0].expand(3, -1, -1)], 1))
        seq = vit.transformer.resblocks[0](seq)
        seq = torch.cat([seq[:, :17], p[1].expand(3, -1, -1)], 1)
        seq = vit.transformer.resblocks[1](seq)
        expected = vit.ln_post(seq[:, 0]) @ vit.proj
        torch.testing.assert_close(encode_image(vit, x, p), expected, atol=1e-6, rtol=1e-5)
