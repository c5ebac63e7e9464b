"""TOMM (our CTP + TFT design): zero-shot start, ablations from options, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewclip.backbones import load_backbone
from fewclip.methods.base import METHODS, accuracy
from fewclip.methods.cocoop import CoCoOp
from fewclip.methods.coop import CoOp
from fewclip.methods.tomm import ABLATIONS, TOMM, symmetric_contrastive_loss
from fewclip.prompting.encoder_base import cache_images, encode_items
from fewclip.prompting.toy import coloured_squares
from fewclip.prompting.visual_prompts import VisualPromptError

TRAIN = {"epochs": 3, "batch_size": 8, "warmup_epochs": 0, "optimizer": "adam", "lr": 0.03}


@pytest.fixture(scope="module")
def backbone():
    bb = load_backbone("fewclip-test-vit", None, device="cpu")
    bb.model.logit_scale.data.fill_(math.log(100.0))
    return bb


@pytest.fixture(scope="module")
def task(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("squares")
    train, names = coloured_squares(root / "train", 4, 8, seed=0)
    val, _ = coloured_squares(root / "val", 4, 4, seed=1)
    test, _ = coloured_squares(root / "test", 4, 10, seed=2)
    new, new_names = coloured_squares(root / "new", 3, 4, seed=3, offset=4)
    features = cache_images(backbone, train, val, views=2, seed=0, tokens=True)
    test_f, test_t, test_y, _ = encode_items(backbone, test, tokens=True)
    return {
        "train": train,
        "val": val,
        "test": test,
        "names": names,
        "new": new,
        "new_names": new_names,
        "features": features,
        "test_f": test_f,
        "test_t": test_t,
        "test_y": test_y,
    }


def zero_shot_logits(backbone, features, names):
    text = backbone.encode_text([f"a photo of a {n}." for n in names])
    return 100.0 * features @ text.T


def perturb(module, seed=0, skip=()):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(s in name for s in skip):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "options",
    [{}, {"ctp": False}, {"ctp_mode": "attention"}, {"class_embedding": "tokens"}],
    ids=["ctp+tft", "tft-only", "ctp-attention", "token-class-embedding"],
)
def test_gate_zero_starts_at_zero_shot(backbone, task, options):
    method = TOMM(**options)
    method.prepare(backbone, task["names"], seed=0)
    f, t = task["test_f"], task["test_t"]
    expected = zero_shot_logits(backbone, f, task["new_names"])
    with torch.no_grad():
        # the TFT attention weights may be anything: with the gate at 0 they do not count
        perturb(method.learner.tft or torch.nn.Module(), skip=("gate",))
        got = method.feature_logits(f, task["new_names"], t)
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
        if method.learner.tft is not None:
            method.learner.tft.gate.fill_(0.5)
            assert not torch.allclose(method.feature_logits(f, task["new_names"], t), expected)


def test_ctp_bias_is_class_aware_and_cocoop_bias_is_not(backbone, task):
    ctp = TOMM(ctp_zero_init=False, ctp_reduction=2)  # d / 16 = 2 ReLU units may all be off
    ctp.prepare(backbone, task["names"], seed=0)
    f = task["test_f"][:3]
    bias = ctp.learner.ctp(f, ctp.class_embeddings(task["names"]))
    assert bias.shape == (3, 4, 16)
    assert not torch.allclose(bias[0, 0], bias[0, 1])  # same image, two classes
    assert not torch.allclose(bias[0, 0], bias[1, 0])  # same class, two images
    attention = TOMM(ctp_mode="attention", ctp_zero_init=False)
    attention.prepare(backbone, task["names"], seed=0)
    emb = attention.class_embeddings(task["names"])
    out = attention.learner.ctp(f, emb, task["test_t"][:3])
    assert out.shape == (3, 4, 16) and not torch.allclose(out[0, 0], out[0, 1])
    cocoop = TOMM(**ABLATIONS["CoCoOp"])
    cocoop.prepare(backbone, task["names"], seed=0)
    assert cocoop.learner.image_bias(f).shape == (3, 16)  # one bias for every class
    text = cocoop.text_features(f, task["names"])
    assert text.shape == (3, 4, 32)


def test_symmetric_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)  # per image, per class
    labels = torch.tensor([0, 1, 0])
    logits = 10.0 * torch.einsum("bd,bcd->bc", image, text)
    loss = symmetric_contrastive_loss(logits, image, text, labels, 10.0)
    i2t = F.cross_entropy(logits, labels)
    positive = torch.stack([text[0, 0], text[1, 1], text[2, 0]])
    t2i = 10.0 * positive @ image.T
    # images 0 and 2 share class 0: each of their texts has two positives
    targets = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    t2i_loss = -(targets * t2i.log_softmax(-1)).sum(-1).mean()
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i_loss).item(), rel=1e-6)


@pytest.mark.parametrize("ablation,reference", [("CoOp", CoOp), ("CoCoOp", CoCoOp)])
def test_ablations_reproduce_coop_and_cocoop(backbone, task, ablation, reference):
    tomm = TOMM(**ABLATIONS[ablation], **TRAIN)
    ref = reference(init="a photo of a", **TRAIN)
    args = (backbone, task["train"], task["val"], task["names"])
    r1 = tomm.fit(*args, seed=1, features=task["features"])
    r2 = ref.fit(*args, seed=1, features=task["features"])
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r2.history])
    f = task["test_f"]
    torch.testing.assert_close(
        tomm.feature_logits(f, task["new_names"]),
        ref.feature_logits(f, task["new_names"]),
        atol=1e-4,
        rtol=1e-5,
    )
    assert tomm.trainable_parameters() == ref.trainable_parameters()


def test_ctp_tft_training_beats_zero_shot_and_is_deterministic(backbone, task):
    kw = {**TRAIN, "epochs": 10}
    a, b = TOMM(**kw), TOMM(**kw)
    args = (backbone, task["train"], task["val"], task["names"])
    result = a.fit(*args, seed=0)
    b.fit(*args, seed=0)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    zs = accuracy(zero_shot_logits(backbone, task["test_f"], task["names"]), task["test_y"])
    acc = a.accuracy(backbone, task["test"], task["names"])
    assert acc >= zs + 15, (acc, zs)
    assert a.learner.tft.gate.item() != 0.0
    for (name, pa), pb in zip(
        a.learner.state_dict().items(), b.learner.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, msg=name)
    logits, labels = a.evaluate(backbone, task["new"], task["new_names"])
    assert logits.shape == (12, 3) and labels.shape == (12,)


def test_attention_ctp_trains_on_cached_tokens_and_needs_a_vit(backbone, task, test_rn):
    method = TOMM(ctp_mode="attention", **TRAIN)
    assert method.needs_tokens
    method.fit(
        backbone, task["train"], task["val"], task["names"], seed=0, features=task["features"]
    )
    assert method.logits(backbone, task["test"], task["names"]).shape == (40, 4)
    with pytest.raises(VisualPromptError):
        TOMM(ctp_mode="attention", **TRAIN).fit(test_rn, task["train"], task["val"], task["names"])
    # the MLP variant needs no tokens and runs on a ResNet
    assert (
        TOMM(**{**TRAIN, "epochs": 1})
        .fit(test_rn, task["train"], task["val"], task["names"])
        .best_epoch
        == 0
    )


def test_options_are_checked():
    assert METHODS["tomm"] is TOMM
    with pytest.raises(ValueError, match="alternatives"):
        TOMM(image_bias=True)
    with pytest.raises(ValueError, match="loss"):
        TOMM(loss="hinge")
    with pytest.raises(ValueError, match="class_embedding"):
        TOMM(class_embedding="wordnet")
    with pytest.raises(ValueError, match="CTP mode"):
        TOMM(ctp_mode="film").prepare(
            load_backbone("fewclip-test-vit", None, device="cpu"), ["a", "b"]
        )


def test_tft_learning_rate_factor_groups_the_tft_parameters(backbone, task):
    method = TOMM(tft_lr_factor=50.0, lr=0.002)
    method.prepare(backbone, task["names"], seed=0)
    optimizer, _ = method._optimizer_and_schedule(epochs=2)
    lrs = [g["initial_lr"] for g in optimizer.param_groups]
    tft = {id(p) for p in method.learner.tft.parameters()}
    assert lrs == [pytest.approx(0.002), pytest.approx(0.1)]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == tft
    assert not tft & {id(p) for p in optimizer.param_groups[0]["params"]}
    # factor 1: one group, as before
    plain = TOMM()
    plain.prepare(backbone, task["names"], seed=0)
    assert len(plain._optimizer_and_schedule(epochs=2)[0].param_groups) == 1
