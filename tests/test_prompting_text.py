"""Text prompt learner: reproduces open_clip's encode_text, batches images x classes."""

from __future__ import annotations

import pytest
import torch

from fewclip.prompting.text_prompts import (
    DEFAULT_N_CTX,
    TextPromptLearner,
    TextTower,
    count_tokens,
)

NAMES = ["dog", "hot air balloon", "red car", "a"]


def frozen(backbone, texts):
    with torch.no_grad():
        return backbone.model.encode_text(backbone.tokenizer(texts))


@pytest.mark.parametrize("arch", ["test_vit", "test_rn"])
def test_init_from_phrase_reproduces_frozen_text_features(arch, request):
    backbone = request.getfixturevalue(arch)
    learner = TextPromptLearner(TextTower(backbone.model), backbone.tokenizer, init="a photo of a")
    assert learner.n_ctx == 4 == count_tokens(backbone.tokenizer, "a photo of a")
    with torch.no_grad():
        ours = learner(NAMES)
    expected = frozen(backbone, [f"a photo of a {n}." for n in NAMES])
    assert ours.shape == (len(NAMES), backbone.embed_dim)
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)


def test_class_specific_context_reproduces_each_class(test_vit):
    tower = TextTower(test_vit.model)
    learner = TextPromptLearner(
        tower, test_vit.tokenizer, init="a photo of a", class_specific=True, classnames=NAMES
    )
    assert learner.ctx.shape == (len(NAMES), 4, tower.width)
    with torch.no_grad():
        # give class 1 the context of "a picture of the": only its feature changes
        other = TextPromptLearner(tower, test_vit.tokenizer, init="a picture of the")
        learner.ctx[1] = other.ctx
        ours = learner(NAMES)
    expected = frozen(test_vit, [f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(ours[[0, 2, 3]], expected[[0, 2, 3]], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(
        ours[1], frozen(test_vit, [f"a picture of the {NAMES[1]}."])[0], atol=2e-6, rtol=1e-5
    )
    with pytest.raises(ValueError, match="class-specific"):
        learner(["cat", "bird"])


def test_partial_context_keeps_the_rest_of_the_phrase(test_vit):
    """APEX: 2 learnable tokens of "a photo of a"; "of a" stays in the fixed suffix."""
    learner = TextPromptLearner(
        TextTower(test_vit.model), test_vit.tokenizer, init="a photo of a", n_ctx=2
    )
    assert learner.ctx.shape[0] == 2
    with torch.no_grad():
        torch.testing.assert_close(
            learner(NAMES),
            frozen(test_vit, [f"a photo of a {n}." for n in NAMES]),
            atol=2e-6,
            rtol=1e-5,
        )
        learner.ctx.zero_()
        changed = learner(NAMES)
    assert not torch.allclose(changed, frozen(test_vit, [f"a photo of a {n}." for n in NAMES]))
    with pytest.raises(ValueError, match="n_ctx"):
        TextPromptLearner(TextTower(test_vit.model), test_vit.tokenizer, init="a photo", n_ctx=3)


def test_truncation_is_exact_and_shorter(test_vit):
    tower = TextTower(test_vit.model)
    learner = TextPromptLearner(tower, test_vit.tokenizer, n_ctx=5)
    prompts = learner.class_prompts(NAMES)
    assert tower.truncated_length(prompts.ids) < tower.context_length
    with torch.no_grad():
        torch.testing.assert_close(
            learner(NAMES), learner(NAMES, truncate=False), atol=2e-6, rtol=1e-5
        )


def test_random_init_is_coop_default_and_seeded(test_vit):
    tower = TextTower(test_vit.model)
    a = TextPromptLearner(tower, test_vit.tokenizer, generator=torch.Generator().manual_seed(0))
    b = TextPromptLearner(tower, test_vit.tokenizer, generator=torch.Generator().manual_seed(0))
    assert a.ctx.shape == (DEFAULT_N_CTX, tower.width)
    assert a.context_words.split() == ["X"] * DEFAULT_N_CTX
    torch.testing.assert_close(a.ctx, b.ctx)
    assert 0.01 < a.ctx.std().item() < 0.03


def test_image_conditioned_bias_batches_images_and_classes(test_vit):
    tower = TextTower(test_vit.model)
    learner = TextPromptLearner(tower, test_vit.tokenizer, init="a photo of a")
    g = torch.Generator().manual_seed(0)
    bias = torch.randn(3, tower.width, generator=g)
    per_class = torch.randn(3, len(NAMES), tower.width, generator=g)
    with torch.no_grad():
        shared = learner(NAMES, bias=bias)
        specific = learner(NAMES, bias=per_class)
        zero = learner(NAMES, bias=torch.zeros(2, tower.width))
        # image 1 done alone, by shifting the context by hand
        ctx = learner.ctx.clone()
        learner.ctx += bias[1]
        alone = learner(NAMES)
        learner.ctx.copy_(ctx)
    assert shared.shape == specific.shape == (3, len(NAMES), test_vit.embed_dim)
    torch.testing.assert_close(shared[1], alone, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(zero[0], learner(NAMES).detach(), atol=2e-6, rtol=1e-5)
    assert not torch.allclose(specific[0, 0], specific[0, 1])


def test_gradients_reach_only_the_context(test_vit):
    learner = TextPromptLearner(TextTower(test_vit.model), test_vit.tokenizer, init="a photo of a")
    learner(NAMES).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert [n for n, _ in learner.named_parameters()] == ["ctx"]
    assert all(p.grad is None for p in test_vit.model.parameters())


def test_init_phrase_counts_words_as_the_official_code(test_vit):
    """Official CoOp: n_ctx = len(ctx_init.split(" ")). "itap" is 2 BPE tokens, so of
    "a itap of a" (5 tokens, 4 words) the first 4 tokens are learnable and the last "a"
    stays in the fixed suffix."""
    tower, tok = TextTower(test_vit.model), test_vit.tokenizer
    assert count_tokens(tok, "itap") == 2
    words = TextPromptLearner(tower, tok, init="a itap of a")
    tokens = TextPromptLearner(tower, tok, init="a itap of a", count="tokens")
    assert (words.n_ctx, tokens.n_ctx) == (4, 5)
    ids = tok(["a itap of a"])[0]
    torch.testing.assert_close(words.ctx, tower.embed(ids[None])[0, 1:5])
    names = ["dog", "red car"]
    expected = frozen(test_vit, [f"a itap of a {n}." for n in names])
    with torch.no_grad():
        for learner in (words, tokens):
            torch.testing.assert_close(learner(names), expected, atol=2e-6, rtol=1e-5)
        words.ctx.zero_()
        tokens.ctx.zero_()
        # zeroing the context: the official learner keeps the 5th token ("a") fixed
        prompts = words.class_prompts(names)
        torch.testing.assert_close(prompts.suffix[:, 0], tower.embed(ids[None])[0, 5].expand(2, -1))
        assert not torch.allclose(words(names), tokens(names))
    assert TextPromptLearner(tower, tok, init="a_photo_of_a").n_ctx == 4  # "_" is a space


@pytest.mark.parametrize(
    "position, text",
    [
        ("end", "a photo of a {}."),
        ("middle", "a photo {} of a."),  # M // 2 = 2 context tokens before the name
        ("front", "{} a photo of a."),
    ],
)
def test_class_token_positions_follow_the_official_order(test_vit, position, text):
    """With the context at its init embeddings, each layout is the frozen feature of the
    same words in the official order: [SOS, ctx[:M//2], name, ctx[M//2:], ".", EOT] etc."""
    learner = TextPromptLearner(
        TextTower(test_vit.model), test_vit.tokenizer, init="a photo of a", position=position
    )
    with torch.no_grad():
        ours = learner(NAMES)
        expected = frozen(test_vit, [text.format(n) for n in NAMES])
        torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)
        # image-conditioned prompts (B, C, ...) use the same order
        batched = learner(NAMES, bias=torch.zeros(2, learner.tower.width))
        torch.testing.assert_close(batched, ours.expand(2, -1, -1), atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="position"):
        TextPromptLearner(TextTower(test_vit.model), test_vit.tokenizer, position="left")
