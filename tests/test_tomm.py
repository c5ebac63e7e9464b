"""TOMM (our CTP + TFT design): zero-shot start, patch TFT, ablations from options, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewclip.backbones import load_backbone
from fewclip.methods.base import METHODS, accuracy
from fewclip.methods.cocoop import CoCoOp
from fewclip.methods.coop import CoOp
from fewclip.methods.tomm import (
    ABLATIONS,
    TOMM,
    PatchTextGuidedTuning,
    symmetric_contrastive_loss,
)
from fewclip.prompting.encoder_base import CachedImages, cache_images, encode_items
from fewclip.prompting.patch_tokens import PatchTokenError, image_tokens, token_grid
from fewclip.prompting.toy import coloured_squares
from fewclip.prompting.visual_prompts import encode_image

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
    [
        {},
        {"ctp": False},
        {"tft": "global"},
        {"ctp": False, "tft": "global"},
        {"ctp_mode": "attention"},
        {"class_embedding": "tokens"},
    ],
    ids=["ctp+tft", "tft-only", "ctp+global-tft", "global-tft", "ctp-attention", "token-emb"],
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


def test_attention_ctp_trains_on_cached_tokens_vit_and_resnet(backbone, task, test_rn):
    method = TOMM(ctp_mode="attention", **TRAIN)
    assert method.needs_tokens
    method.fit(
        backbone, task["train"], task["val"], task["names"], seed=0, features=task["features"]
    )
    assert method.logits(backbone, task["test"], task["names"]).shape == (40, 4)
    # a ResNet gives its attention pool's spatial tokens: CTP attention and patch TFT run
    rn = TOMM(ctp_mode="attention", **{**TRAIN, "epochs": 1})
    assert rn.fit(test_rn, task["train"], task["val"], task["names"]).best_epoch == 0
    assert rn.logits(test_rn, task["test"][:5], task["names"]).shape == (5, 4)
    # without patch tokens (global TFT, MLP CTP) nothing needs them
    assert not TOMM(tft="global").needs_tokens and TOMM().needs_tokens


def test_options_are_checked():
    assert METHODS["tomm"] is TOMM
    with pytest.raises(ValueError, match="alternatives"):
        TOMM(image_bias=True)
    with pytest.raises(ValueError, match="loss"):
        TOMM(loss="hinge")
    with pytest.raises(ValueError, match="class_embedding"):
        TOMM(class_embedding="wordnet")
    with pytest.raises(ValueError, match="unknown tft"):
        TOMM(tft="film")
    assert TOMM(tft=True).options.tft == "patch" and TOMM(tft=False).options.tft == "off"
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
    plain = TOMM(tft_lr_factor=1.0)
    plain.prepare(backbone, task["names"], seed=0)
    assert len(plain._optimizer_and_schedule(epochs=2)[0].param_groups) == 1


# --------------------------------------------------------------------------- patch TFT


def test_patch_tokens_are_projected_like_the_global_feature(test_vit, test_rn):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled, tokens = image_tokens(test_vit.model.visual, images)
        torch.testing.assert_close(pooled, test_vit.model.encode_image(images))
        _, vit_tokens = encode_image(test_vit.model.visual, images, return_tokens=True)
        torch.testing.assert_close(tokens, vit_tokens)
        assert tokens.shape[-1] == pooled.shape[-1] and token_grid(tokens.shape[1])
        visual = test_rn.model.visual
        rn_images = torch.randn(2, 3, visual.image_size, visual.image_size)
        pooled, tokens = image_tokens(visual, rn_images)
        torch.testing.assert_close(pooled, test_rn.model.encode_image(rn_images))
        side = visual.attnpool.positional_embedding.shape[0] - 1
        assert tokens.shape == (2, side, pooled.shape[-1])
        # one head: the pooled feature is the attention-weighted mean of the token
        # projections (plus the mean token's share), so both live in one space
        pool = visual.attnpool
        heads, pool.num_heads = pool.num_heads, 1
        try:
            x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(rn_images)))))
            pooled, tokens = image_tokens(visual, rn_images)
            seq = x.flatten(2).transpose(1, 2)
            seq = torch.cat([seq.mean(1, keepdim=True), seq], 1) + pool.positional_embedding
            q, k = pool.q_proj(seq[:, :1]), pool.k_proj(seq)
            a = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(-1)[:, 0]  # (B, 1+T)
            mean_token = pool.c_proj(pool.v_proj(seq[:, :1]))
            rebuilt = a[:, :1] * mean_token[:, 0] + torch.einsum("bt,btd->bd", a[:, 1:], tokens)
            torch.testing.assert_close(pooled, rebuilt, atol=1e-5, rtol=1e-4)
        finally:
            pool.num_heads = heads
    with pytest.raises(PatchTokenError, match="no patch tokens"):
        image_tokens(torch.nn.Linear(2, 2), images)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_patch_attention_sums_to_one_and_finds_the_evidence_patch():
    d, classes, patches = 32, 4, 9
    tft = PatchTextGuidedTuning(d, reduction=4, gate_init=0.0, scale=50.0)
    text = _unit(classes, d, seed=1)
    tokens = 0.3 * _unit(classes, patches, d, seed=2)  # image i: evidence of class i ...
    where = torch.tensor([3, 0, 8, 5])  # ... in this one patch
    tokens[torch.arange(classes), where] = text
    tokens = F.normalize(tokens, dim=-1)
    for perturbed in (False, True):
        if perturbed:  # learned query/key weights (not zero) must not break the invariants
            with torch.no_grad():
                tft.query.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
        attn = tft.attention(text, tokens)  # (B images, C classes, T patches)
        assert attn.shape == (classes, classes, patches)
        torch.testing.assert_close(attn.sum(-1), torch.ones(classes, classes))
        assert (attn >= 0).all()
        own = attn[torch.arange(classes), torch.arange(classes)]  # image i, its own class
        assert torch.equal(own.argmax(-1), where)
        assert (own[torch.arange(classes), where] > 0.5).all()
        # the class-conditioned feature of image i for class i is (nearly) that patch
        z = tft.class_features(text, tokens)[torch.arange(classes), torch.arange(classes)]
        nearest = torch.einsum("bd,btd->bt", z, tokens).argmax(-1)
        assert torch.equal(nearest, where)
    # per-image class texts (CTP) give the same shapes
    assert tft.attention(text.expand(classes, -1, -1), tokens).shape == attn.shape
    # weight 0: u_c = f for every class; weight 1: u_c = z_c
    f = _unit(classes, d, seed=4)
    torch.testing.assert_close(tft(f, text, tokens), f.unsqueeze(1).expand(-1, classes, -1))
    with torch.no_grad():
        tft.gate.fill_(1.0)
    torch.testing.assert_close(tft(f, text, tokens), tft.class_features(text, tokens))


def test_symmetric_loss_with_class_conditioned_images_by_hand():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)  # (B, C, d)
    text = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 1, 0])
    logits = 10.0 * (image * text).sum(-1)
    loss = symmetric_contrastive_loss(logits, image, text, labels, 10.0)
    t2i = torch.empty(3, 3)
    for j in range(3):
        for i in range(3):  # text of image j's class against image i seen through that class
            t2i[j, i] = 10.0 * text[labels[j]] @ image[i, labels[j]]
    targets = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    t2i_loss = -(targets * t2i.log_softmax(-1)).sum(-1).mean()
    expected = 0.5 * (F.cross_entropy(logits, labels) + t2i_loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def _patch_evidence_task(text, views, per_class, patches, seed):
    """Global features carry no class information; the class text sits in one random patch."""
    g = torch.Generator().manual_seed(seed)
    classes, d = text.shape
    labels = torch.arange(classes).repeat_interleave(per_class)
    n = len(labels)
    features = F.normalize(torch.randn(views, n, d, generator=g), dim=-1)
    tokens = F.normalize(torch.randn(views, n, patches, d, generator=g), dim=-1)
    where = torch.randint(0, patches, (views, n), generator=g)
    v, i = torch.meshgrid(torch.arange(views), torch.arange(n), indexing="ij")
    tokens[v, i, where] = F.normalize(text[labels] + 0.3 * tokens[v, i, where], dim=-1)
    return features, tokens, labels


def test_patch_tft_learns_on_a_known_answer_task(backbone, task):
    # the prompts barely move (lr 1e-6), so what is learned is TFT's (lr 1e-6 x 1e5)
    opts = {**TRAIN, "epochs": 6, "optimizer": "adam", "lr": 1e-6, "tft_lr_factor": 1e5}
    method = TOMM(ctp=False, **opts)
    method.prepare(backbone, task["names"], seed=0)
    with torch.no_grad():
        text = method.text_features(torch.zeros(1, 32), task["names"]).float()
    train, train_tokens, train_y = _patch_evidence_task(text, 3, 8, 9, seed=0)
    val, val_tokens, val_y = _patch_evidence_task(text, 1, 10, 9, seed=1)
    cached = CachedImages(train, train_y, val[0], val_y, train_tokens, val_tokens[0])
    zero_shot = accuracy(zero_shot_logits(backbone, val[0], task["names"]), val_y)
    result = method.fit(backbone, task["train"], task["val"], task["names"], features=cached)
    weights = [h["tft_weight"] for h in result.history]
    assert len(weights) == 6 and weights[-1] > 0.2, weights  # the weight moves up from 0
    # measured: zero-shot 15%; val 25 -> 80% while the weight goes 0.36 -> 1.1
    assert result.best_val_acc >= zero_shot + 40, (result.best_val_acc, zero_shot)
