"""APEX: ensemble weights, the inference-time ensemble, training on a synthetic task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewclip import runner
from fewclip.backbones import load_backbone
from fewclip.config import RunConfig
from fewclip.methods.apex import APEX, ensemble_weights
from fewclip.methods.base import METHODS, accuracy
from fewclip.prompting.encoder_base import EncoderMethod, batch_loader, encode_items
from fewclip.prompting.toy import coloured_squares
from fewclip.prompting.visual_prompts import VisualPromptError


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
    # far from the training classes for this random text encoder (a < 1), and one base class
    new_names = ["snow leopard", "traffic light", "pizza", "green"]
    images = torch.cat([x for x, *_ in batch_loader(backbone, test[:6])])
    return {
        "train": train,
        "val": val,
        "test": test,
        "names": names,
        "new_names": new_names,
        "images": images,
    }


def perturb(method, seed=0):
    """Move every learnable parameter away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.learner.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_ensemble_weights_by_hand():
    train = torch.eye(4)[:2]  # two training classes along e1, e2
    angles = torch.tensor([0.0, 0.2, 0.6, 1.0, 1.4])  # radians away from e1, towards e3
    evals = torch.stack([torch.cos(angles), torch.zeros(5), torch.sin(angles), torch.zeros(5)], 1)
    a = ensemble_weights(train, evals)
    assert a[0] == 1.0  # a training class
    assert a[1] == 1.0  # within epsilon: 1 - cos(0.2) = 0.0199 < 0.05
    cos = torch.cos(angles[2])
    d_avg = 1 - (cos + 0) / 2
    assert a[2].item() == pytest.approx(math.exp(-4 * d_avg.item()))
    assert (a[2:] < 1).all() and (a[2:].diff() < 0).all()  # monotone in distance
    far = ensemble_weights(train, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    assert far.item() == pytest.approx(math.exp(-4.0))
    assert ensemble_weights(train, evals, beta=1.0)[2] > a[2]


def test_registered_with_paper_defaults():
    assert METHODS["apex"] is APEX and issubclass(APEX, EncoderMethod)
    assert APEX().resolved() == {
        "config": "base",
        "lr": 0.15,
        "epochs": 15,
        "warmup_type": "linear",
        "warmup_lr": 0.01,
        "batch_size": 16,
        "depth": None,  # every layer
        "augment": True,
    }
    sgd = APEX(optimizer="sgd").resolved()
    assert sgd["lr"] == 0.0015 and sgd["epochs"] == 30
    assert APEX().options.weight_decay == 1e-3
    with pytest.raises(ValueError, match="ensemble"):
        APEX(ensemble="sometimes")


def test_alpha_one_is_the_prompted_adapted_model(backbone, task):
    method = APEX(alpha=1.0)
    method.prepare(backbone, task["names"], seed=0)
    learner = method.learner
    assert method.trainable_parameters() == 2 * 2 * 32 + 2 * 16 + 32 * 32 + 32
    images, names = task["images"], task["new_names"]
    with torch.no_grad():
        u = learner.text(names)
        z = learner.visual(backbone.model.visual, images)
        # adapter at identity / zero bias: the prompted model itself
        expected = 100.0 * F.normalize(z, dim=-1) @ F.normalize(u, dim=-1).T
        torch.testing.assert_close(
            method.logits(backbone, images, names), expected, atol=1e-4, rtol=1e-5
        )
        perturb(method)
        none = APEX(ensemble="none")
        none.prepare(backbone, task["names"], seed=0)
        none.learner.load_state_dict(learner.state_dict())
        torch.testing.assert_close(
            method.logits(backbone, images, names),
            none.logits(backbone, images, names),
            atol=1e-4,
            rtol=1e-5,
        )


def test_alpha_zero_at_init_is_zero_shot_clip(backbone, task):
    """a = 0: un-adapted learned prompt (= "a photo of a" at init) and the prompt-free image
    encoder, whatever the visual prompts and the adapter hold."""
    method = APEX(alpha=0.0)
    method.prepare(backbone, task["names"], seed=0)
    with torch.no_grad():
        learner = method.learner
        learner.visual.prompts.normal_()
        learner.adapter_weight.add_(0.3)
        learner.adapter_bias.add_(0.3)
        images, names = task["images"], task["new_names"][:2]  # far from every training class
        zs_text = backbone.encode_text([f"a photo of a {n}." for n in names])
        zs = 100.0 * backbone.encode_images(images) @ zs_text.T
        torch.testing.assert_close(method.logits(backbone, images, names), zs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("ensemble", ["both", "text", "visual", "none"])
def test_adaptive_ensemble_matches_the_equations(backbone, task, ensemble):
    method = APEX(ensemble=ensemble)
    method.prepare(backbone, task["names"], seed=0)
    perturb(method)
    names, images = task["new_names"], task["images"]
    with torch.no_grad():
        frozen_train = backbone.encode_text([f"a photo of a {n}." for n in task["names"]])
        frozen_eval = backbone.encode_text([f"a photo of a {n}." for n in names])
        a = ensemble_weights(frozen_train, frozen_eval)
        torch.testing.assert_close(method.alpha(backbone, names), a)
        assert a[3] == 1.0  # "green" is a training class
        assert a[0] < a[1] < 1.0
        learner = method.learner
        u = learner.text(names)
        adapted = u @ learner.adapter_weight + learner.adapter_bias
        t = a[:, None] * adapted + (1 - a[:, None]) * u if ensemble in ("both", "text") else adapted
        z = learner.visual(backbone.model.visual, images)
        if ensemble in ("both", "visual"):
            z = a.mean() * z + (1 - a.mean()) * backbone.model.encode_image(images)
        expected = 100.0 * F.normalize(z, dim=-1) @ F.normalize(t, dim=-1).T
        torch.testing.assert_close(
            method.logits(backbone, images, names), expected, atol=1e-4, rtol=1e-5
        )
        # base classes: a = 1, every ensemble is the trained model
        base = method.logits(backbone, images, task["names"])
        none = (
            100.0
            * F.normalize(learner.visual(backbone.model.visual, images), dim=-1)
            @ F.normalize(learner.adapt(learner.text(task["names"])), dim=-1).T
        )
        torch.testing.assert_close(base, none, atol=1e-4, rtol=1e-5)


def test_training_lowers_loss_and_beats_zero_shot(backbone, task):
    method = APEX(epochs=10, batch_size=8, lr=1.0)  # Adadelta; toy-scale lr
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=1)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[0]["lr"] == pytest.approx(0.01)  # linear warm-up epoch
    features, _, labels, _ = encode_items(backbone, task["test"])
    text = backbone.encode_text([f"a photo of a {n}." for n in task["names"]])
    zs = accuracy(features @ text.T, labels)
    acc = method.accuracy(backbone, task["test"], task["names"])
    assert acc >= zs + 25, (acc, zs)
    assert any("frozen" in n for n in result.notes)


def test_determinism_and_resnet_error(backbone, task, test_rn):
    kw = dict(epochs=2, batch_size=8, lr=1.0)
    a, b, c = APEX(**kw), APEX(**kw), APEX(**kw)
    for m, seed in [(a, 5), (b, 5), (c, 6)]:
        m.fit(backbone, task["train"], task["val"], task["names"], seed=seed)
    for (name, pa), pb in zip(
        a.learner.state_dict().items(), b.learner.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, msg=name)
    assert not torch.allclose(a.learner.visual.prompts, c.learner.visual.prompts)
    with pytest.raises(VisualPromptError):
        APEX(**kw).fit(test_rn, task["train"], task["val"], task["names"])


def test_mixed_precision_on_cpu(task):
    bf16 = load_backbone("fewclip-test-vit", None, device="cpu", precision="amp_bf16")
    method = APEX(epochs=2, batch_size=8)
    result = method.fit(bf16, task["train"], task["val"], task["names"], seed=0)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    logits = method.logits(bf16, task["images"], task["new_names"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_fixed_alpha_leaves_training_classes_as_trained(backbone, task, alpha):
    """A fixed ensemble weight is for classes away from the training ones: on the training
    classes (and so in validation and epoch selection) the adapted model is used as is."""
    fixed, none = APEX(alpha=alpha), APEX(ensemble="none")
    for m in (fixed, none):
        m.prepare(backbone, task["names"], seed=0)
    perturb(fixed)
    none.learner.load_state_dict(fixed.learner.state_dict())
    images, names = task["images"], task["names"]
    with torch.no_grad():
        torch.testing.assert_close(
            fixed.logits(backbone, images, names),
            none.logits(backbone, images, names),
            atol=1e-4,
            rtol=1e-5,
        )
        # a mixed list: the classes near a training one (adaptive a = 1; here "green", a
        # training class, and "pizza", within epsilon under this random text encoder) keep
        # a = 1, the others get alpha
        adaptive = APEX()
        adaptive.prepare(backbone, task["names"], seed=0)
        near = adaptive.alpha(backbone, task["new_names"]) == 1.0
        assert near.tolist() == [False, False, True, True]
        expected = torch.where(near, 1.0, torch.full((4,), alpha))
        torch.testing.assert_close(fixed.alpha(backbone, task["new_names"]), expected)


def test_fixed_alpha_does_not_change_validation(backbone, task):
    """Training ignores the ensemble, so a fixed alpha must leave the whole val curve (and
    the chosen epoch) exactly as with the adaptive weight."""
    kw = dict(epochs=3, batch_size=8, lr=1.0)
    adaptive = APEX(**kw).fit(backbone, task["train"], task["val"], task["names"], seed=3)
    fixed = APEX(alpha=0.0, **kw).fit(backbone, task["train"], task["val"], task["names"], seed=3)
    assert [h["val_acc"] for h in fixed.history] == [h["val_acc"] for h in adaptive.history]
    assert fixed.best_epoch == adaptive.best_epoch


CROSS_EVAL = {
    "config": "cross_eval",
    "lr": 0.02,
    "epochs": 6,
    "warmup_type": "linear",
    "warmup_lr": 1e-3,
    "batch_size": 32,
    "depth": 3,
    "augment": False,
}


@pytest.mark.parametrize(
    "protocol, config",
    [("few_shot", "base"), ("base_to_new", "base"), ("cross_dataset", "cross_eval")]
    + [("domain_generalisation", "cross_eval")],
)
def test_official_config_per_protocol(protocol, config):
    """configs/trainers/APEX/cross_eval.yaml for cross-dataset and domain generalisation;
    the run layer passes the protocol, and a given option wins over the config."""
    method = runner.make_method(RunConfig(method="apex", protocol=protocol))
    resolved = method.resolved()
    assert resolved["config"] == config
    if config == "cross_eval":
        assert resolved == CROSS_EVAL
    else:
        assert resolved == APEX().resolved()
    given = RunConfig(method="apex", protocol=protocol, options={"epochs": 2, "depth": 1})
    assert runner.make_method(given).resolved()["epochs"] == 2
    assert runner.make_method(given).resolved()["depth"] == 1
    with pytest.raises(ValueError, match="protocol"):
        APEX(protocol="zero_shot")


def test_cross_eval_trains_unaugmented_with_depth_3(backbone, task, monkeypatch):
    import fewclip.methods.apex as apex_module

    seeds = []
    loader = apex_module.batch_loader

    def recording(bb, items, batches=None, augment_seed=None, **kw):
        if batches is not None:
            seeds.append(augment_seed)
        return loader(bb, items, batches, augment_seed, **kw)

    monkeypatch.setattr(apex_module, "batch_loader", recording)
    method = APEX(protocol="domain_generalisation", epochs=2, batch_size=8)
    result = method.fit(backbone, task["train"], task["val"], task["names"], seed=0)
    # J = 3 capped at this test ViT's 2 layers (a given depth is never capped)
    assert method.learner.visual.depth == 2 and result.chosen["config"] == "cross_eval"
    deep = APEX(protocol="cross_dataset", depth=1, epochs=1, batch_size=8)
    deep.prepare(backbone, task["names"])
    assert deep.learner.visual.depth == 1
    assert seeds == [None, None]  # the test transform at every epoch
    seeds.clear()
    APEX(epochs=1, batch_size=8).fit(backbone, task["train"], task["val"], task["names"])
    assert seeds == [0] and seeds[0] is not None  # base config: Dassl's augmentation


def test_variants_score_every_ensemble_on_one_trained_model(backbone, task):
    """variants=True: each ensemble mode and fixed alpha, scored from features computed once,
    gives the logits of a separately configured APEX with the same trained parameters."""
    method = APEX(variants=True, variant_alphas=(0.0, 0.5))
    method.prepare(backbone, task["names"], seed=0)
    perturb(method)
    test, names = task["test"][:8], task["new_names"]
    logits, labels = method.evaluate(backbone, test, names)
    assert set(method.last_variants) == {"both", "text", "visual", "none", "alpha=0", "alpha=0.5"}
    for name, got in method.last_variants.items():
        kw = {"alpha": float(name.split("=")[1])} if "=" in name else {"ensemble": name}
        other = APEX(**kw)
        other.prepare(backbone, task["names"], seed=0)
        other.learner.load_state_dict(method.learner.state_dict())
        expected, same = other.evaluate(backbone, test, names)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5, msg=name)
        assert torch.equal(labels, same)
    torch.testing.assert_close(logits, method.last_variants["both"])  # the configured one


def test_variants_reach_the_run_record(tmp_path):
    from fewclip.prompting.toy import coloured_squares

    coloured_squares(tmp_path / "sq", num_classes=4, per_class=10, seed=0)
    cfg = RunConfig(
        method="apex",
        dataset="folder:sq",
        backbone="fewclip-test-vit",
        pretrained=None,
        shots=2,
        protocol="base_to_new",
        options={"epochs": 1, "batch_size": 4, "variants": True, "variant_alphas": [0.5]},
        data_root=str(tmp_path),
        cache_dir="",
        progress=False,
    )
    record = runner.run(cfg)
    for part in ("base", "new"):
        variants = record["metrics"][part]["variants"]
        assert set(variants) == {"both", "text", "visual", "none", "alpha=0.5"}
        assert variants["both"]["correct"] == record["metrics"][part]["correct"]
        # training classes: every ensemble setting is the adapted model as trained
        if part == "base":
            assert len({v["correct"] for v in variants.values()}) == 1
    # the notebook helpers: one row per variant, never averaged together; the curves
    import pandas as pd

    from fewclip import evidence
    from fewclip import notebook as nb

    frame = pd.DataFrame([{**record, "status": "done", "label": "apex"}])
    rows = nb.expand_variants(frame)
    assert sorted(rows["label"]) == sorted(f"APEX ({v})" for v in variants)
    alpha = rows[rows["label"] == "APEX (alpha=0.5)"].iloc[0]
    assert alpha["new_accuracy"] == record["metrics"]["new"]["variants"]["alpha=0.5"]["accuracy"]
    summary = evidence.summarize(rows, by=("label",), value="hm")
    assert len(summary) == 5 and summary["config_id"].nunique() == 5
    curves = nb.epoch_curves(frame)
    assert list(curves["epoch"]) == [0] and curves["chosen"].all()
    assert nb.chosen_epochs(frame).iloc[0]["chose epoch 0"] == 1
