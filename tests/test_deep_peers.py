"""MaPLe, PromptSRC and CLIP-LoRA: prompt construction against transcriptions of the official
forward passes on identical tensors, PromptSRC's regularisers and GPA by hand, LoRA at
initialisation equal to zero-shot CLIP, the official configs per protocol, and learning on
the coloured-squares task."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from fewclip.methods import METHODS, get_method
from fewclip.methods.clip_lora import CLIPLoRA
from fewclip.methods.maple import MaPLe, MaPLeLearner
from fewclip.methods.promptsrc import (
    PromptSRC,
    frozen_text_features,
    gpa_weights,
    regularisers,
)
from fewclip.prompting.deep_prompts import Coupling, VisualPromptError, encode_text
from fewclip.prompting.encoder_base import EncoderMethod, batch_loader
from fewclip.prompting.lora import LoRA, LoRAError
from fewclip.prompting.toy import coloured_squares


@pytest.fixture(scope="module")
def deep(test_vit):
    """fewclip-test-vit's tokenizer on a random CLIP with 3 image and 3 text layers (the test
    model's text tower has one layer: too shallow for deep text prompts)."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
        text_cfg={"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 3},
    ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return dataclasses.replace(test_vit, model=model)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    train, names = coloured_squares(root / "train", 4, 4, seed=0)
    val, _ = coloured_squares(root / "val", 4, 2, seed=1)
    test, _ = coloured_squares(root / "test", 4, 4, seed=2)
    return {"train": train, "val": val, "test": test, "names": names}


def images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- official forwards


def official_text(model, prompts, ids, deeper):
    """The official MaPLe / IVLP ``TextEncoder``: (N, L, w) prompts, sequence-first blocks
    that swap in ``deeper[counter]`` at positions 1..n of layers 1.. (counter from 0)."""
    x = prompts + model.positional_embedding
    x = x.permute(1, 0, 2)  # NLD -> LND
    n, counter = deeper[0].shape[0] if len(deeper) else 0, 0
    for i, block in enumerate(model.transformer.resblocks):
        if i > 0 and counter <= len(deeper) - 1:
            ctx = deeper[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], ctx, x[1 + n :]], dim=0)
            counter += 1
        x = block(x.permute(1, 0, 2), attn_mask=model.attn_mask).permute(1, 0, 2)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ model.text_projection


def official_image(vit, image, shared_ctx, deeper):
    """The official ``VisionTransformer_MaPLe.forward`` (also IVLP's with VPT prompts)."""
    x = vit.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = vit.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + vit.positional_embedding
    x = torch.cat([x, shared_ctx.expand(x.shape[0], -1, -1)], dim=1)
    x = vit.ln_pre(x).permute(1, 0, 2)
    n, counter = shared_ctx.shape[0], 0
    for i, block in enumerate(vit.transformer.resblocks):
        if i > 0 and counter <= len(deeper) - 1:
            prefix = x[: x.shape[0] - n]
            ctx = deeper[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([prefix, ctx], dim=0)
            counter += 1
        x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = x.permute(1, 0, 2)
    return vit.ln_post(x[:, 0, :]) @ vit.proj


# --------------------------------------------------------------------------- construction


def test_registered_as_encoder_methods():
    for name, cls in (("maple", MaPLe), ("promptsrc", PromptSRC), ("clip_lora", CLIPLoRA)):
        assert METHODS[name] is cls and issubclass(cls, EncoderMethod)


@pytest.mark.parametrize("truncate", [True, False])
def test_deep_text_prompts_equal_the_official_text_encoder(deep, truncate):
    method = MaPLe(depth=3)
    method.prepare(deep, ["red", "green apple"], seed=0)
    learner = method.learner
    prompts = learner.text.class_prompts(["red", "green apple"])
    embeddings = prompts.assemble(learner.text.ctx)
    deeper = learner.deep_text.prompts
    assert deeper.shape == (2, 2, 16)  # J - 1 layers, n = 2 tokens, text width 16
    with torch.no_grad():
        ours = encode_text(learner.text.tower, embeddings, prompts.ids, deeper, truncate)
        theirs = official_text(deep.model, embeddings, prompts.ids, list(deeper))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        # no deeper prompts: exactly the plain prompt-learner path
        assert torch.equal(
            encode_text(learner.text.tower, embeddings, prompts.ids, None),
            learner.text.tower.encode(embeddings, prompts.ids),
        )
        # the deeper prompts matter at each layer they enter
        moved = deeper.clone()  # noise: LayerNorm removes a constant shift
        moved[1] += torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
        assert not torch.allclose(
            encode_text(learner.text.tower, embeddings, prompts.ids, moved), ours
        )


def test_maple_prompt_is_a_photo_with_two_learnable_words(deep):
    method = MaPLe(depth=3)
    method.prepare(deep, ["red"], seed=0)
    text = method.learner.text
    ids = deep.tokenizer(["a photo of a red."])[0]
    assert text.n_ctx == 2 and text.context_words == "a photo of a"
    assert torch.equal(text.class_prompts(["red"]).ids[0], ids)
    torch.testing.assert_close(text.ctx, text.tower.embed(ids[None])[0, 1:3])


def test_init_phrase_and_template_are_the_backbones_words(deep):
    from fewclip.backbones import PromptWords

    emoji = dataclasses.replace(
        deep, words=PromptWords("an emoji of {}.", "an emoji of", "a test checkpoint")
    )
    for method in (MaPLe(), PromptSRC()):
        assert method.uses_backbone_words
        method.prepare(emoji, ["red"], seed=0)
        assert method.learner.text.context_words == "an emoji of"
    official = MaPLe(init="official")
    official.prepare(emoji, ["red"], seed=0)
    assert official.learner.text.context_words == "a photo of a"
    lora = CLIPLoRA()
    lora.prepare(emoji, ["red"], seed=0)
    assert lora.template == "an emoji of {}." and lora.uses_backbone_words
    lora = CLIPLoRA(template="{} texture.")
    lora.prepare(emoji, ["red"], seed=0)
    assert lora.template == "{} texture." and not lora.uses_backbone_words


def test_maple_coupled_visual_prompts_equal_the_official_vision_encoder(deep):
    method = MaPLe(depth=3)
    method.prepare(deep, ["red", "blue"], seed=0)
    learner: MaPLeLearner = method.learner
    with torch.no_grad():
        for p in learner.parameters():  # away from init: the maps and prompts all matter
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x = images()
        c, q = learner.text.ctx, learner.deep_text.prompts
        shared = learner.coupling.first(c)
        deeper = [f(q_j) for f, q_j in zip(learner.coupling.deeper, q, strict=True)]
        theirs = official_image(deep.model.visual, x, shared, deeper)
        ours = learner.image_features(deep.model.visual, x)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_coupling_clones_one_map_for_the_deeper_layers():
    torch.manual_seed(0)
    coupling = Coupling(16, 32, depth=4)
    assert coupling.depth == 4 and len(coupling.deeper) == 3
    first = coupling.deeper[0].weight
    assert all(torch.equal(f.weight, first) for f in coupling.deeper)  # official _get_clones
    assert not torch.equal(coupling.first.weight, first)
    assert coupling.deeper[0].weight is not coupling.deeper[1].weight  # separate parameters
    out = coupling(torch.ones(2, 16), torch.ones(3, 2, 16))
    assert [tuple(p.shape) for p in out] == [(2, 32)] * 4


def test_promptsrc_prompts_equal_the_official_ivlp_encoders(deep):
    method = PromptSRC(depth_vision=3, depth_text=2)
    method.prepare(deep, ["red", "blue"], seed=0)
    learner = method.learner
    assert learner.text.n_ctx == 4 and learner.visual.prompts.shape == (3, 4, 32)
    assert learner.deep_text.prompts.shape == (1, 4, 16)
    with torch.no_grad():
        x = images()
        vp = learner.visual.prompts
        theirs = official_image(deep.model.visual, x, vp[0], list(vp[1:]))
        torch.testing.assert_close(
            learner.visual(deep.model.visual, x), theirs, atol=1e-5, rtol=1e-5
        )
        prompts = learner.text.class_prompts(["red", "blue"])
        embeddings = prompts.assemble(learner.text.ctx)
        theirs = official_text(deep.model, embeddings, prompts.ids, list(learner.deep_text.prompts))
        torch.testing.assert_close(
            learner.text_features(["red", "blue"]), theirs, atol=1e-5, rtol=1e-5
        )


def test_vit_only_methods_refuse_a_resnet(test_rn):
    for cls in (MaPLe, PromptSRC):
        with pytest.raises(VisualPromptError, match="Vision Transformer"):
            cls().prepare(test_rn, ["red"], seed=0)
    with pytest.raises(LoRAError, match="encoder='text'"):
        CLIPLoRA().prepare(test_rn, ["red"], seed=0)
    CLIPLoRA(encoder="text").prepare(test_rn, ["red"], seed=0)  # as the official code can


def test_explicit_depth_beyond_the_towers_is_refused(test_vit):
    with pytest.raises(ValueError, match="depth must be in"):
        MaPLe(depth=3).prepare(test_vit, ["red"], seed=0)  # one text layer
    with pytest.raises(ValueError, match="depth_text must be in"):
        PromptSRC(depth_text=2).prepare(test_vit, ["red"], seed=0)


# --------------------------------------------------------------------------- configs


def test_official_configs_per_protocol():
    base = MaPLe().resolved()
    assert (base["lr"], base["epochs"], base["batch_size"], base["depth"]) == (0.0035, 5, 4, 9)
    xd = MaPLe(protocol="cross_dataset").resolved()
    assert (xd["lr"], xd["epochs"], xd["depth"]) == (0.0026, 2, 3)
    assert MaPLe(protocol="domain_generalisation").resolved() == xd
    assert MaPLe(protocol="few_shot", lr=0.1).resolved()["lr"] == 0.1  # a given option wins
    b2n = PromptSRC(protocol="base_to_new").resolved()
    assert (b2n["epochs"], b2n["depth_vision"], b2n["gpa_mean"], b2n["gpa_std"]) == (20, 9, 15, 1)
    fs = PromptSRC(protocol="few_shot").resolved()
    assert (fs["epochs"], fs["gpa_mean"], fs["gpa_std"]) == (50, 30, 30)
    fine = PromptSRC(protocol="few_shot", dataset="dtd").resolved()
    assert (fine["gpa_mean"], fine["gpa_std"]) == (45, 5)
    xd = PromptSRC(protocol="cross_dataset").resolved()
    assert (xd["epochs"], xd["depth_text"], xd["gpa_mean"], xd["gpa_std"]) == (20, 3, 6, 10)
    lora = CLIPLoRA().options
    assert (lora.lr, lora.rank, lora.alpha, lora.dropout, lora.n_iters) == (2e-4, 2, 1, 0.25, 500)
    with pytest.raises(ValueError, match="unknown protocol"):
        MaPLe(protocol="zero_shot")


# --------------------------------------------------------------------------- PromptSRC


def test_regularisers_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t0 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    z, z0 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.5]])
    logits = torch.tensor([[0.0, 0.0]])
    frozen = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    terms = regularisers(t, t0, z, z0, logits, frozen)
    assert terms["text"].item() == pytest.approx(25 * (0.4 + 0.8) / 4)
    assert terms["image"].item() == pytest.approx(10 * 0.5 / 2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert terms["logits"].item() == pytest.approx(kl / 2)
    same = regularisers(t, t, z, z, logits, logits)
    assert all(v.item() == 0 for v in same.values())


def test_gpa_weights_by_hand():
    w = gpa_weights(3, mean=2.0, std=1.0)
    e = math.exp(-0.5)
    assert w.tolist() == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    assert gpa_weights(1, 15.0, 1.0).tolist() == [1.0]
    with pytest.raises(ValueError, match="vanish"):
        gpa_weights(2, 1e4, 1.0)


def test_frozen_text_is_the_normalised_mean_over_sixty_templates(test_vit):
    from fewclip.data.templates import CLIP_IMAGENET_60

    assert len(CLIP_IMAGENET_60) == 60 and len(set(CLIP_IMAGENET_60)) == 60
    assert CLIP_IMAGENET_60[0] == "a photo of a {}." and CLIP_IMAGENET_60[-1] == "itap of the {}."
    names = ["red", "blue"]
    with torch.no_grad():
        raw = [
            test_vit.model.encode_text(test_vit.tokenizer([t.format(c) for c in names]))
            for t in CLIP_IMAGENET_60
        ]
    expected = F.normalize(torch.stack(raw).mean(0), dim=-1)
    torch.testing.assert_close(frozen_text_features(test_vit, names), expected)


def test_gpa_is_the_gaussian_weighted_sum_of_the_epochs(test_vit, task):
    method = PromptSRC(epochs=3, gpa_mean=2.0, gpa_std=1.0, batch_size=8)
    states = []
    end_epoch = method.end_epoch

    def record(epoch, epochs):
        states.append({k: v.clone() for k, v in method.learner.state_dict().items()})
        end_epoch(epoch, epochs)

    method.end_epoch = record
    result = method.fit(test_vit, task["train"], task["val"], task["names"], seed=0)
    w = gpa_weights(3, 2.0, 1.0)
    assert len(states) == 3 and result.chosen["selection"] == "gpa"
    for key, value in method.learner.state_dict().items():
        expected = sum(float(w[e]) * states[e][key] for e in range(3))
        torch.testing.assert_close(value, expected)
    assert not torch.equal(states[0]["text.ctx"], states[2]["text.ctx"])


def test_promptsrc_loss_adds_the_regularisers(test_vit, task):
    method = PromptSRC(epochs=1)
    method.prepare(test_vit, task["names"], seed=0)
    method.start_fit(test_vit, task["train"])
    x = torch.cat([b for b, *_ in batch_loader(test_vit, task["train"][:4])])
    y = torch.tensor([d.label for d in task["train"][:4]])
    s = test_vit.logit_scale
    with torch.no_grad():
        t = F.normalize(method.learner.text_features(task["names"]), dim=-1)
        z = F.normalize(method.learner.visual(test_vit.model.visual, x), dim=-1)
        z0 = test_vit.encode_images(x)
        terms = regularisers(
            t, method.frozen_text, z, z0, s * z @ t.T, s * z0 @ method.frozen_text.T
        )
        expected = F.cross_entropy(s * z @ t.T, y) + sum(terms.values())
        torch.testing.assert_close(method.train_loss(test_vit, x, y), expected)


# --------------------------------------------------------------------------- LoRA


def test_lora_at_init_is_zero_shot_clip(test_vit, task):
    method = CLIPLoRA(template="a photo of a {}.")
    method.prepare(test_vit, task["names"], seed=0)
    x = torch.cat([b for b, *_ in batch_loader(test_vit, task["test"][:6])])
    text = test_vit.encode_text([f"a photo of a {c}." for c in task["names"]])
    zero_shot = test_vit.logit_scale * test_vit.encode_images(x) @ text.T
    assert torch.equal(method.logits(test_vit, x, task["names"]), zero_shot)
    assert all(
        torch.equal(b, torch.zeros_like(b)) for b in method.learner.parameters() if b.shape[1] == 2
    )
    # the backbone is untouched outside the ``with`` block
    mha = [b.attn for b in test_vit.model.visual.transformer.resblocks]
    assert all(type(m) is torch.nn.MultiheadAttention for m in mha)


def test_lora_training_path_equals_the_merged_weights(deep):
    lora = LoRA(deep.model, targets=("q", "k", "v", "o"), dropout=0.0)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    adapter = lora.adapters["text"][1]
    mha = deep.model.transformer.resblocks[1].attn
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(0))
    mask = deep.model.attn_mask[:7, :7]
    with torch.no_grad():
        unmerged = adapter.attend(mha, x, mask)
        merged = torch.func.functional_call(
            mha, adapter.merged_weights(mha), (x, x, x), {"need_weights": False, "attn_mask": mask}
        )[0]
        plain = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(unmerged, merged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, plain)  # the updates change the attention
    # the updates reach the encoders only inside ``applied``
    ids = deep.tokenizer(["a photo of a red."])
    with torch.no_grad():
        before = deep.model.encode_text(ids)
        with lora.applied(deep.model):
            inside = deep.model.encode_text(ids)
        assert not torch.allclose(inside, before) and torch.equal(
            deep.model.encode_text(ids), before
        )


def test_lora_scaling_and_init():
    torch.manual_seed(0)
    from fewclip.prompting.lora import AttentionLoRA

    a = AttentionLoRA(16, ("q", "v"), rank=4, alpha=2.0)
    assert a.scaling == pytest.approx(2.0 / math.sqrt(4))  # official alpha / sqrt(r)
    assert a.A["q"].shape == (4, 16) and a.B["q"].shape == (16, 4)
    assert a.A["q"].abs().max() <= 1 / math.sqrt(16) and a.A["q"].std() > 0  # Kaiming (a=sqrt 5)
    assert torch.equal(a.delta("v"), torch.zeros(16, 16))


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "name,options",
    [
        ("maple", {"epochs": 6, "lr": 0.05, "batch_size": 8}),
        ("promptsrc", {"epochs": 6, "lr": 0.02, "batch_size": 8, "gpa": False}),
        ("clip_lora", {"iterations": 24, "lr": 1e-2, "batch_size": 8}),
    ],
)
def test_learns_the_squares(name, options, test_vit, task):
    """The coloured squares are learnable from pixels; the random test CLIP cannot tell them
    apart by their names (chance: 25%)."""
    method = get_method(name, **options)
    method.prepare(test_vit, task["names"], seed=0)
    before = method.accuracy(test_vit, task["test"], task["names"])
    result = method.fit(test_vit, task["train"], task["val"], task["names"], seed=0)
    after = method.accuracy(test_vit, task["test"], task["names"])
    assert after >= before + 15.0, (before, after)
    if name != "promptsrc":  # PromptSRC's regularisers grow as the prompts move away
        assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_deterministic_under_a_seed(test_vit, task):
    out = []
    for _ in range(2):
        method = MaPLe(epochs=1, batch_size=8)
        method.fit(test_vit, task["train"], task["val"], task["names"], seed=3)
        out.append(method.logits(test_vit, task["test"][:4], task["names"]))
    assert torch.equal(*out)


# --------------------------------------------------------------------------- protocols


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    coloured_squares(data / "squares", num_classes=4, per_class=12, seed=0)
    coloured_squares(data / "squares_b", num_classes=2, per_class=12, seed=1, offset=4)
    return data


FAST = {
    "maple": {"epochs": 1},
    "promptsrc": {"epochs": 1},
    "clip_lora": {"iterations": 2},
}
#: protocol -> (evaluation datasets, the config MaPLe / PromptSRC take)
PROTOCOLS = {
    "base_to_new": ([], "vit_b16_c2_ep5_batch4_2ctx", "vit_b16_c2_ep20_batch4_4+4ctx"),
    "cross_dataset": (
        ["folder:squares_b"],
        "vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
        "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
    ),
    "domain_generalisation": (
        ["folder:squares"],
        "vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
        "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
    ),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("method", sorted(FAST))
def test_every_protocol_through_the_run_api(method, protocol, root):
    from fewclip.config import RunConfig
    from fewclip.runner import run

    targets, maple_config, promptsrc_config = PROTOCOLS[protocol]
    record = run(
        RunConfig(
            method=method,
            dataset="folder:squares",
            backbone="fewclip-test-vit",
            pretrained=None,
            shots=2,
            protocol=protocol,
            eval_datasets=targets,
            options=FAST[method],
            data_root=str(root),
            cache_dir=str(root / "cache"),
            progress=False,
        )
    )
    assert record["options"]["protocol"] == protocol
    expected = {"maple": maple_config, "promptsrc": promptsrc_config}.get(method)
    if expected:
        assert record["chosen"]["config"] == expected
    if protocol == "base_to_new":
        assert 0 <= record["base_accuracy"] <= 100 and 0 <= record["new_accuracy"] <= 100
    else:
        assert set(record["metrics"]["transfer"]) == set(targets)


@pytest.mark.parametrize("method", sorted(FAST))
def test_no_validation_runs_the_official_fixed_setting(method, root):
    from fewclip.config import RunConfig
    from fewclip.runner import run

    record = run(
        RunConfig(
            method=method,
            dataset="folder:squares",
            backbone="fewclip-test-vit",
            pretrained=None,
            shots=2,
            val="none",
            options=FAST[method],
            data_root=str(root),
            cache_dir=str(root / "cache"),
            progress=False,
        )
    )
    assert record["metrics"]["val_images"] == 0 and record["metrics"]["best_val_accuracy"] is None
    assert record["chosen"]["selection"] == ("gpa" if method == "promptsrc" else "last")
