"""A backbone's own words: declared beside its weights, read by the prompt learners.

At initialisation (before any step) every prompt method that starts at zero-shot CLIP gives
zero-shot's logits with the same phrase (CoOp from a phrase, CoCoOp with its Meta-Net's
output at zero, TOMM); APEX, whose visual prompts start random, is within a point of
zero-shot's accuracy. On fewclip's tiny emoji models the backbone's words ("an emoji of")
are what zero-shot speaks; OpenAI's "a photo of a" is far below it there.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

import fewclip.offline.tasks  # noqa: F401  (registers the offline tasks)
from fewclip.backbones import (
    BACKBONE_WORDS,
    OFFICIAL_WORDS,
    OPENAI_WORDS,
    PromptWords,
    init_phrase,
    load_backbone,
    phrase_template,
    read_prompt_words,
    save_checkpoint,
    words_file,
    words_key,
)
from fewclip.data.base import load_dataset
from fewclip.methods.apex import APEX, OFFICIAL_EPSILON, relative_epsilon
from fewclip.methods.base import accuracy
from fewclip.methods.cocoop import CoCoOp
from fewclip.methods.coop import CoOp
from fewclip.methods.kgcoop import KgCoOp
from fewclip.methods.maple import MaPLe
from fewclip.methods.proda import ProDA
from fewclip.methods.prograd import ProGrad
from fewclip.methods.promptsrc import PromptSRC
from fewclip.methods.tomm import TOMM
from fewclip.pretrain.data import EVAL_TEMPLATE
from fewclip.prompting.encoder_base import batch_loader

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEWCLIP_DATA", ROOT / "data"))
TASK = "emoji_openmoji_subcategory"
ARCHS = ["tiny-emoji-rn", "tiny-emoji-vit"]
EMOJI_WORDS = {"template": "an emoji of {}.", "init": "an emoji of"}


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("arch", ["tiny-emoji-rn", "tiny-emoji-vit"])
def test_tiny_models_declare_their_pretraining_caption(arch):
    """The words beside the weights are the caption form the model was pretrained and
    evaluated with (fewclip.pretrain.data.EVAL_TEMPLATE), and the init phrase is its words
    before the name."""
    words = read_prompt_words(Path(__file__).parents[1] / f"lib/fewclip/weights/{arch}.safetensors")
    assert words.as_dict() == EMOJI_WORDS
    assert words.template == EVAL_TEMPLATE
    assert phrase_template(words, words.init) == words.template
    assert words.source == f"fewclip/weights/{arch}.config.json"


def test_default_words_are_openai_and_a_checkpoint_can_declare_its_own(tmp_path, test_rn):
    assert OPENAI_WORDS.as_dict() == {"template": "a photo of a {}.", "init": "a photo of a"}
    assert test_rn.words == OPENAI_WORDS  # random init
    ckpt = save_checkpoint(test_rn.model, tmp_path / "mine.v2.safetensors")
    assert words_file(ckpt) == tmp_path / "mine.v2.config.json"
    plain = load_backbone("fewclip-test-rn", str(ckpt), device="cpu")
    assert plain.words == OPENAI_WORDS  # no JSON beside it
    words = {"template": "a sketch of a {}.", "init": "a sketch of a"}
    words_file(ckpt).write_text(json.dumps({"prompt_words": words, "note": "mine"}))
    own = load_backbone("fewclip-test-rn", str(ckpt), device="cpu")
    assert own.words.as_dict() == words and own.words.source.endswith("mine.v2.config.json")
    assert own.describe()["prompt_words"] == words
    given = load_backbone("fewclip-test-rn", str(ckpt), device="cpu", prompt_words=EMOJI_WORDS)
    assert given.words.as_dict() == EMOJI_WORDS  # the argument wins over the file


def test_bad_words_are_one_clear_error(tmp_path, test_rn):
    ckpt = save_checkpoint(test_rn.model, tmp_path / "bad.safetensors")
    words_file(ckpt).write_text(json.dumps({"prompt_words": {"template": "an emoji of"}}))
    with pytest.raises(ValueError, match=r"bad.config.json\) must contain '\{\}' exactly once"):
        read_prompt_words(ckpt)
    words_file(ckpt).write_text(json.dumps({"prompt_words": {"phrase": "an emoji of"}}))
    with pytest.raises(ValueError, match="'template' and 'init'"):
        read_prompt_words(ckpt)
    words_file(ckpt).write_text("{not json")
    with pytest.raises(ValueError, match="bad.config.json is not a JSON object"):
        read_prompt_words(ckpt)
    with pytest.raises(ValueError, match="non-empty phrase"):
        PromptWords(init=" ")


def test_init_option_values():
    emoji = PromptWords(**EMOJI_WORDS)
    assert init_phrase(emoji, BACKBONE_WORDS) == "an emoji of"
    assert init_phrase(emoji, OFFICIAL_WORDS) == "a photo of a"
    assert init_phrase(emoji, "a drawing of a") == "a drawing of a"
    assert init_phrase(emoji, None) is None
    assert phrase_template(emoji, BACKBONE_WORDS) == "an emoji of {}."
    assert phrase_template(emoji, None) == "an emoji of {}."  # random context: the backbone's
    assert phrase_template(emoji, OFFICIAL_WORDS) == "a photo of a {}."
    assert phrase_template(emoji, "a_drawing_of_a") == "a drawing of a {}."
    for method, option in ((CoCoOp, "init"), (TOMM, "init"), (APEX, "text_init")):
        assert getattr(method().options, option) == BACKBONE_WORDS
    assert CoOp().options.init is None  # CoOp's official default: random context


def test_runs_that_read_the_words_are_keyed_by_them():
    """A run key includes the words when the method reads them and they are not OpenAI's,
    so a result made with other words is never served (and OpenAI-weight keys stay)."""
    assert words_key("tiny-emoji-vit", "default") == "|words:an emoji of {}.|an emoji of"
    assert words_key("fewclip-test-rn", None) == ""
    assert CoOp(init="backbone").uses_backbone_words and not CoOp().uses_backbone_words
    assert not CoOp(init="a photo of a").uses_backbone_words
    assert CoCoOp().uses_backbone_words and not CoCoOp(init=OFFICIAL_WORDS).uses_backbone_words
    assert APEX().uses_backbone_words
    assert TOMM().uses_backbone_words and not TOMM(init="a photo of a").uses_backbone_words
    assert TOMM(init=None).uses_backbone_words  # e_c's template
    assert not TOMM(init=None, ctp=False).uses_backbone_words


# --------------------------------------------------------------------------- at initialisation


@functools.cache
def emoji(arch: str):
    """A tiny model, the test images of the offline OpenMoji task (15 classes, 344 images),
    their labels, the class names and the images' frozen features."""
    dataset = load_dataset(TASK, DATA)
    backbone = load_backbone(arch, device="cpu")
    batches = [(x[ok], y[ok]) for x, y, _, ok in batch_loader(backbone, dataset.test)]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    return backbone, images, labels, list(dataset.classnames), backbone.encode_images(images)


def zero_shot_logits(backbone, features, names, template):
    text = backbone.encode_text([template.format(n) for n in names])
    return backbone.logit_scale * features @ text.T


STARTS_AT_ZERO_SHOT = [
    ("coop", lambda init: CoOp(init=init)),
    # CoCoOp with its Meta-Net's output at zero (pi(x) = 0; the official init is random)
    ("cocoop", lambda init: CoCoOp(init=init, meta_init="zero")),
    ("tomm", lambda init: TOMM(init=init)),
    ("kgcoop", lambda init: KgCoOp(init=init)),
    # ProGrad with M = the phrase's words (the official 16 puts zero vectors before it)
    ("prograd", lambda init: ProGrad(init=init, n_ctx="words")),
    # ProDA with the phrase in every prompt and the class name at the end
    ("proda", lambda init: ProDA(init=init, n_prompts=2, layout="end")),
]


@pytest.mark.parametrize("name, make", STARTS_AT_ZERO_SHOT, ids=[m[0] for m in STARTS_AT_ZERO_SHOT])
@pytest.mark.parametrize("init", [BACKBONE_WORDS, OFFICIAL_WORDS])
@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_methods_start_at_zero_shot_with_their_phrase(arch, name, make, init):
    backbone, images, _, names, features = emoji(arch)
    method = make(init)
    method.prepare(backbone, names, seed=1)
    template = phrase_template(backbone.words, init)
    expected = zero_shot_logits(backbone, features[:48], names, template)
    torch.testing.assert_close(
        method.logits(backbone, images[:48], names), expected, atol=2e-4, rtol=1e-4
    )


def test_cocoop_official_meta_net_starts_off_zero_shot_and_zero_starts_on_it():
    """The official Meta-Net init (PyTorch's default) gives every context token a random
    bias from the first image on; ``meta_init="zero"`` zeroes its last layer only (the same
    random draws otherwise), so pi(x) = 0 and the logits are zero-shot's."""
    backbone, images, _, names, features = emoji("tiny-emoji-vit")
    official, zero = CoCoOp(), CoCoOp(meta_init="zero")
    for method in (official, zero):
        method.prepare(backbone, names, seed=1)
    first, last = official.learner.meta_net[0], zero.learner.meta_net[-1]
    assert torch.equal(first.weight, zero.learner.meta_net[0].weight)
    assert not last.weight.any() and not last.bias.any()
    assert official.learner.meta_net[-1].bias.abs().max() > 0.05
    expected = zero_shot_logits(backbone, features[:48], names, backbone.words.template)
    torch.testing.assert_close(zero.logits(backbone, images[:48], names), expected)
    moved = (official.logits(backbone, images[:48], names) - expected).abs().max()
    assert moved > 0.5, moved
    with pytest.raises(ValueError, match="cocoop: unknown meta_init 'random'"):
        CoCoOp(meta_init="random")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_backbone_words_are_what_zero_shot_speaks_and_official_ones_are_not(arch):
    """The reason for the default: on the tiny emoji models "an emoji of {}." is zero-shot's
    accuracy, "a photo of a {}." is far below it (chance: 6.7%)."""
    backbone, _, labels, names, features = emoji(arch)
    own = accuracy(zero_shot_logits(backbone, features, names, backbone.words.template), labels)
    photo = accuracy(zero_shot_logits(backbone, features, names, "a photo of a {}."), labels)
    assert own > 35.0 and photo < own - 10.0, (own, photo)


def test_apex_starts_within_a_point_of_zero_shot():
    """APEX's deep visual prompts start random (N(0, 0.02)); its text side starts at the
    backbone's phrase, its adapter at the identity: accuracy at initialisation (mean of
    three seeds) within a point of zero-shot's on the same images. (APEX needs a ViT.)"""
    backbone, images, labels, names, features = emoji("tiny-emoji-vit")
    zs = accuracy(zero_shot_logits(backbone, features, names, backbone.words.template), labels)
    starts = []
    for seed in range(3):
        method = APEX()
        method.prepare(backbone, names, seed=seed)
        starts.append(accuracy(method.logits(backbone, images, names), labels))
    assert abs(sum(starts) / len(starts) - zs) <= 1.0, (starts, zs)
    official = APEX(text_init=OFFICIAL_WORDS)
    official.prepare(backbone, names, seed=0)
    assert accuracy(official.logits(backbone, images, names), labels) < zs - 10.0


@pytest.mark.parametrize("method", [MaPLe, PromptSRC], ids=["maple", "promptsrc"])
def test_deep_prompt_methods_start_at_zero_shot_with_the_context_init(method):
    """MaPLe and PromptSRC: with ``deep_text_init="context"`` the deeper text prompts start
    at the context's own hidden states, so the text features are zero-shot's with the
    phrase exactly, and accuracy (random visual prompts; mean of three seeds) is within 2
    points of zero-shot's (measured on tiny-emoji-vit version 4: MaPLe -0.1, PromptSRC +1.5).
    The official N(0, 0.02) deeper text prompts move the text features and start lower
    (measured: MaPLe -3.5, PromptSRC -4.6), within a measured bound of 8 points."""
    backbone, images, labels, names, features = emoji("tiny-emoji-vit")
    text = backbone.encode_text([backbone.words.template.format(n) for n in names])
    zs = accuracy(zero_shot_logits(backbone, features, names, backbone.words.template), labels)
    starts = {}
    for deep_text_init in ("official", "context"):
        starts[deep_text_init] = []
        for seed in range(3):
            m = method(deep_text_init=deep_text_init)
            m.prepare(backbone, names, seed=seed)
            with torch.no_grad():
                prompted = torch.nn.functional.normalize(m.learner.text_features(names), dim=-1)
            if deep_text_init == "context":
                torch.testing.assert_close(prompted, text, atol=1e-5, rtol=1e-5)
            else:
                assert (prompted - text).abs().max() > 1e-2
            starts[deep_text_init].append(accuracy(m.logits(backbone, images, names), labels))
    mean = {k: sum(v) / len(v) for k, v in starts.items()}
    assert abs(mean["context"] - zs) <= 2.0, (starts, zs)
    assert zs - 8.0 <= mean["official"] < mean["context"], (starts, zs)
    with pytest.raises(ValueError, match="unknown deep_text_init 'zero'"):
        method(deep_text_init="zero")


# --------------------------------------------------------------------------- constants


def test_apex_epsilon_is_relative_to_a_backbone_with_its_own_words():
    """epsilon: 0.05 on OpenAI's words; else the 10% quantile of the training classes'
    nearest-other-class cosine distances (by hand: distances 0.1, 0.1, 0.4 -> 0.1)."""
    d = torch.tensor([0.1, 0.4])  # consecutive cosine distances of three unit vectors
    theta = torch.arccos(1 - d)
    train = torch.stack(
        [
            torch.tensor([1.0, 0.0]),
            torch.stack([torch.cos(theta[0]), torch.sin(theta[0])]),
            torch.stack([torch.cos(theta[0] + theta[1]), torch.sin(theta[0] + theta[1])]),
        ]
    )
    # nearest other class: 0 -> 1 at 0.1, 1 -> 0 at 0.1, 2 -> 1 at 0.4
    assert relative_epsilon(train, 0.0) == pytest.approx(0.1, abs=1e-5)
    assert relative_epsilon(train, 1.0) == pytest.approx(0.4, abs=1e-5)
    assert relative_epsilon(train[:1]) == OFFICIAL_EPSILON  # no other class
    apex = APEX()
    assert apex.resolve_epsilon(OPENAI_WORDS, train) == OFFICIAL_EPSILON
    emoji = PromptWords(**EMOJI_WORDS)
    assert apex.resolve_epsilon(emoji, train) == pytest.approx(relative_epsilon(train))
    assert APEX(epsilon=0.05).resolve_epsilon(emoji, train) == 0.05
    assert APEX(text_init="a photo of a").uses_backbone_words  # epsilon reads the words
    assert not APEX(text_init="a photo of a", epsilon=0.05).uses_backbone_words
    with pytest.raises(ValueError, match="epsilon must be a distance or 'backbone'"):
        APEX(epsilon="relative")
