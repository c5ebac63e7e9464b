"""CoOp and CoCoOp on a synthetic coloured-squares task with a tiny random backbone."""

from __future__ import annotations

import math

import pytest
import torch

from fewclip.backbones import load_backbone
from fewclip.data.base import Datum
from fewclip.methods.base import METHODS, accuracy, get_method
from fewclip.methods.cocoop import CoCoOp
from fewclip.methods.coop import CoOp, coop_epochs
from fewclip.prompting.encoder_base import EncoderMethod, cache_images, encode_items
from fewclip.prompting.toy import coloured_squares

FAST = {"epochs": 12, "batch_size": 8, "warmup_epochs": 0, "optimizer": "adam"}


@pytest.fixture(scope="module")
def backbone():
    """The random test ViT with CLIP's usual temperature (s = 100)."""
    bb = load_backbone("fewclip-test-vit", None, device="cpu")
    bb.model.logit_scale.data.fill_(math.log(100.0))
    return bb


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    train, names = coloured_squares(root / "train", 4, 8, seed=0)
    val, _ = coloured_squares(root / "val", 4, 4, seed=1)
    test, _ = coloured_squares(root / "test", 4, 10, seed=2)
    new, new_names = coloured_squares(root / "new", 4, 6, seed=3, offset=4)
    return {
        "train": train,
        "val": val,
        "test": test,
        "names": names,
        "new": new,
        "new_names": new_names,
    }


def zero_shot_accuracy(backbone, items, names):
    features, _, labels, _ = encode_items(backbone, items)
    text = backbone.encode_text([f"a photo of a {n}." for n in names])
    return accuracy(features @ text.T, labels)


def test_registered_as_encoder_methods():
    for name, cls in [("coop", CoOp), ("cocoop", CoCoOp)]:
        assert METHODS[name] is cls and issubclass(cls, EncoderMethod)
    assert get_method("coop", n_ctx=8).options.n_ctx == 8
    assert get_method("cocoop").options.batch_size == 1
    with pytest.raises(ValueError, match="unknown option"):
        get_method("coop", ctx=8)
    assert [coop_epochs(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]


def test_logits_before_fit_raise(backbone, task):
    with pytest.raises(RuntimeError, match="fit"):
        CoOp().logits(backbone, task["test"], task["names"])


def test_class_specific_coop_learns_and_beats_zero_shot(backbone, task):
    method = CoOp(init="a photo of a", class_specific=True, csc_init="copy", lr=0.01, **FAST)
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=1)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    zs = zero_shot_accuracy(backbone, task["test"], task["names"])
    acc = method.accuracy(backbone, task["test"], task["names"])
    assert acc >= zs + 40, (acc, zs)
    assert method.trainable_parameters() == 4 * 4 * 16  # C x M x w
    with pytest.raises(ValueError, match="class-specific"):
        method.logits(backbone, task["new"], task["new_names"])


def test_unified_coop_learns_and_transfers_to_new_classes(backbone, task):
    method = CoOp(init="a photo of a", lr=0.02, **{**FAST, "epochs": 20})
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=1)
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    zs = zero_shot_accuracy(backbone, task["test"], task["names"])
    assert method.accuracy(backbone, task["test"], task["names"]) >= zs + 10
    logits, labels = method.evaluate(backbone, task["new"], task["new_names"])
    assert logits.shape == (len(task["new"]), 4) and labels.shape == (len(task["new"]),)
    assert result.best_epoch is not None and result.chosen["epochs"] == 20


def test_cached_views_equal_online_reencoding(backbone, task):
    """One cached view per epoch is the same computation as re-encoding every step."""
    kw = dict(n_ctx=4, lr=0.05, epochs=3, batch_size=8, warmup_epochs=0, optimizer="adam")
    cached = CoOp(views=None, **kw)
    online = CoOp(cache_images=False, **kw)
    r1 = cached.fit(backbone, task["train"], task["val"], task["names"], seed=2)
    r2 = online.fit(backbone, task["train"], task["val"], task["names"], seed=2)
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r2.history])
    torch.testing.assert_close(cached.learner.ctx, online.learner.ctx, atol=1e-5, rtol=1e-4)


def test_precomputed_features_and_determinism(backbone, task):
    kw = dict(n_ctx=4, lr=0.05, epochs=3, batch_size=8, warmup_epochs=0, views=2)
    features = cache_images(backbone, task["train"], task["val"], views=2, seed=3)
    assert features.train.shape == (2, 32, 32) and features.val.shape == (16, 32)
    a, b, c = CoOp(**kw), CoOp(**kw), CoOp(**kw)
    a.fit(backbone, task["train"], task["val"], task["names"], seed=3)
    b.fit(backbone, task["train"], task["val"], task["names"], seed=3, features=features)
    c.fit(backbone, task["train"], task["val"], task["names"], seed=4)
    torch.testing.assert_close(a.learner.ctx, b.learner.ctx, atol=1e-6, rtol=1e-5)
    la = a.logits(backbone, task["test"], task["names"])
    torch.testing.assert_close(la, b.logits(backbone, task["test"], task["names"]))
    assert not torch.allclose(a.learner.ctx, c.learner.ctx)  # random init differs by seed


def test_cocoop_learns_with_image_conditioned_context(backbone, task):
    method = CoCoOp(lr=0.01, **FAST)
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=1)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    meta = method.learner.meta_net
    assert meta[0].in_features == 32 and meta[0].out_features == 2 and meta[2].out_features == 16
    zs = zero_shot_accuracy(backbone, task["test"], task["names"])
    assert method.accuracy(backbone, task["test"], task["names"]) >= zs + 10
    # each image gets its own prompts: logits of an image do not depend on its batch
    images = next(
        iter(
            torch.utils.data.DataLoader(
                [
                    backbone.preprocess(__import__("PIL").Image.open(d.impath))
                    for d in task["new"][:5]
                ],
                batch_size=5,
            )
        )
    )
    together = method.logits(backbone, images, task["new_names"])
    alone = method.logits(backbone, images[2:3], task["new_names"])
    torch.testing.assert_close(together[2:3], alone, atol=1e-5, rtol=1e-5)


def test_unreadable_images_are_dropped(backbone, task, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    train = list(task["train"]) + [Datum(str(broken), 0, "red")]
    with pytest.warns(UserWarning, match="unreadable"):
        features = cache_images(backbone, train, task["val"], views=2, seed=0)
    assert features.train.shape[1] == len(task["train"])
    kw = dict(n_ctx=4, epochs=2, batch_size=8, warmup_epochs=0)
    with pytest.warns(UserWarning, match="unreadable"):
        CoOp(cache_images=False, **kw).fit(backbone, train, task["val"], task["names"])


@pytest.mark.parametrize("cls", [CoOp, CoCoOp])
def test_mixed_precision_on_cpu(cls, task):
    bf16 = load_backbone("fewclip-test-vit", None, device="cpu", precision="amp_bf16")
    method = cls(epochs=2, batch_size=8)
    result = method.fit(bf16, task["train"], task["val"], task["names"], seed=0)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    logits = method.logits(bf16, task["test"][:3], task["names"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_official_init_rules_csc_ignored_and_word_count(backbone, task):
    """The official PromptLearner ignores CSC when CTX_INIT is given (unified context, noted
    in the record) and counts the phrase's words; class token positions are options."""
    kw = dict(epochs=1, batch_size=8, views=1)
    official = CoOp(init="a photo of a", class_specific=True, **kw)
    result = official.fit(backbone, task["train"], task["val"], task["names"], seed=0)
    assert not official.learner.class_specific and official.learner.ctx.shape == (4, 16)
    assert any("class_specific ignored" in n for n in result.notes)
    official.logits(backbone, task["new"][:2], task["new_names"])  # unified: new classes work
    random_csc = CoOp(n_ctx=4, class_specific=True, **kw)
    random_csc.fit(backbone, task["train"], task["val"], task["names"], seed=0)
    assert random_csc.learner.ctx.shape == (4, 4, 16)  # CSC without a phrase: per class
    words = CoOp(init="a itap of a", **kw)
    words.fit(backbone, task["train"], task["val"], task["names"], seed=0)
    assert words.learner.n_ctx == 4  # 4 words, 5 BPE tokens
    front = CoOp(init="a photo of a", class_token_position="front", **kw)
    front.fit(backbone, task["train"], task["val"], task["names"], seed=0)
    assert front.learner.position == "front"
    for bad in ({"csc_init": "share"}, {"ctx_count": "chars"}, {"class_token_position": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CoOp(**bad)


@pytest.mark.parametrize("name", ["coop", "cocoop", "apex"])
def test_selection_chooses_a_trained_epoch(backbone, task, name):
    """On a task that training solves (coloured squares; the random context / prompts start
    near chance), val accuracy rises after the warm-up epoch, so the chosen epoch is a
    later one and the whole curve is in the history."""
    kw = {
        "coop": dict(n_ctx=4, class_specific=True, lr=0.01, optimizer="adam", batch_size=8)
        | {"epochs": 6},
        "cocoop": dict(n_ctx=4, lr=0.01, optimizer="adam", batch_size=8, epochs=6),
        "apex": dict(lr=1.0, batch_size=8, epochs=6),
    }[name]
    method = get_method(name, **kw)
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=1)
    curve = [h["val_acc"] for h in result.history]
    assert len(curve) == 6 and all(0 <= v <= 100 for v in curve)
    assert result.best_epoch > 0 and result.best_val_acc == max(curve) > curve[0] + 20, curve
