"""KgCoOp, ProGrad and ProDA: CoOp's text-side peers, on cached image features.

Prompt construction is checked against the official construction rebuilt by hand on the
same tensors (token embeddings, tokenizer, frozen text encoder); the added losses against
hand-computed small cases; each method at initialisation against zero-shot with the same
words where it starts there; learning on coloured squares (a task with a known answer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewclip.backbones import load_backbone
from fewclip.methods.base import METHODS, accuracy, get_method
from fewclip.methods.kgcoop import KgCoOp, knowledge_loss
from fewclip.methods.proda import ProDA, diversity_loss, proda_logits
from fewclip.methods.prograd import (
    ProGrad,
    distillation_loss,
    prograd_gradients,
    with_gradients,
)
from fewclip.prompting.encoder_base import FeaturePromptMethod, cache_images
from fewclip.prompting.hand_crafted import (
    KGCOOP_TEMPLATES,
    PROGRAD_TEMPLATES,
    dataset_template,
    template_phrase,
)
from fewclip.prompting.prompt_ensemble import PromptEnsemble, proda_positions
from fewclip.prompting.text_prompts import TextTower
from fewclip.prompting.toy import coloured_squares

FAST = {"epochs": 12, "batch_size": 8, "warmup_epochs": 0, "optimizer": "adam"}
NAMES = ["dog", "hot air balloon", "red car"]


@pytest.fixture(scope="module")
def backbone():
    """The random test ViT with CLIP's usual temperature (s = 100)."""
    bb = load_backbone("fewclip-test-vit", None, device="cpu")
    bb.model.logit_scale.data.fill_(math.log(100.0))
    return bb


@pytest.fixture(scope="module")
def task(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("squares")
    train, names = coloured_squares(root / "train", 4, 8, seed=0)
    val, _ = coloured_squares(root / "val", 4, 4, seed=1)
    test, _ = coloured_squares(root / "test", 4, 10, seed=2)
    new, new_names = coloured_squares(root / "new", 4, 6, seed=3, offset=4)
    features = cache_images(backbone, train, val, views=4, seed=0)
    return dict(
        train=train,
        val=val,
        test=test,
        names=names,
        new=new,
        new_names=new_names,
        features=features,
    )


def frozen(backbone, texts):
    with torch.no_grad():
        return F.normalize(backbone.model.encode_text(backbone.tokenizer(texts)).float(), dim=-1)


def official_prompts(backbone, prefix_text, ctx, names, position="end"):
    """The official PromptLearner's construction: tokenize "{prefix_text} {name}.", keep the
    SOS embedding and the embeddings after the n_ctx context positions, put ``ctx`` between
    them in the order of ``position`` (CoOp / ProGrad / the ProDA learner all do this)."""
    n_ctx = ctx.shape[0]
    ids = backbone.tokenizer([f"{prefix_text} {n}." for n in names])
    with torch.no_grad():
        emb = backbone.model.token_embedding(ids).float()
    rows = []
    for i, name in enumerate(names):
        name_len = int(backbone.tokenizer([name])[0].argmax()) - 1
        prefix, suffix = emb[i, :1], emb[i, 1 + n_ctx :]
        name_part, rest = suffix[:name_len], suffix[name_len:]
        if position == "end":
            rows.append(torch.cat([prefix, ctx, suffix]))
        elif position == "middle":
            half = n_ctx // 2
            rows.append(torch.cat([prefix, ctx[:half], name_part, ctx[half:], rest]))
        else:
            rows.append(torch.cat([prefix, name_part, ctx, rest]))
    return torch.stack(rows), ids


def encode(backbone, embeddings, ids):
    with torch.no_grad():
        features = TextTower(backbone.model).encode(embeddings, ids, truncate=False)
    return F.normalize(features, dim=-1)


def zero_shot_logits(backbone, features, names):
    """s * f @ w^T with w the frozen features of "a photo of a {name}."."""
    return (
        backbone.logit_scale * features @ frozen(backbone, [f"a photo of a {n}." for n in names]).T
    )


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


# --------------------------------------------------------------------------- registry


def test_registered_with_official_defaults():
    for name, cls in [("kgcoop", KgCoOp), ("prograd", ProGrad), ("proda", ProDA)]:
        assert METHODS[name] is cls and issubclass(cls, FeaturePromptMethod)
    kg, pg, pd = get_method("kgcoop"), get_method("prograd"), get_method("proda")
    assert (kg.options.weight, kg.options.batch_size, kg.options.epochs) == (8.0, 128, 100)
    assert (kg.options.lr, kg.options.init) == (0.002, "backbone")
    assert (pg.options.n_ctx, pg.options.weight, pg.options.temperature) == (16, 1.0, 1.0)
    assert (pd.options.n_prompts, pd.options.n_ctx, pd.options.weight) == (32, 16, 1.0)
    # ProGrad's epochs per protocol: rn50_ep100 for base-to-new, CoOp's schedule otherwise
    assert [ProGrad(protocol="few_shot").default_epochs(k) for k in (1, 4, 16)] == [50, 100, 200]
    assert ProGrad(protocol="base_to_new").default_epochs(16) == 100
    assert ProGrad(protocol="cross_dataset").default_epochs(16) == 200
    # which runs read the backbone's words (their run key then includes them)
    assert KgCoOp().uses_backbone_words and ProGrad().uses_backbone_words
    assert not KgCoOp(init="official", dataset="eurosat").uses_backbone_words
    assert KgCoOp(init="official", dataset="folder:x").uses_backbone_words  # w_c's template
    assert not ProGrad(dataset="oxford_pets").uses_backbone_words
    assert ProDA(init="backbone").uses_backbone_words and not ProDA().uses_backbone_words


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("kgcoop", {"weight": -1.0}, "weight"),
        ("prograd", {"temperature": 0.0}, "temperature"),
        ("proda", {"layout": "left"}, "layout"),
        ("proda", {"prompt_batch": 40}, "prompt_batch"),
        ("proda", {"n_prompts": 0}, "n_prompts"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_method(name, **options)


def test_templates_follow_the_official_tables(backbone):
    assert dataset_template(backbone, "dtd", None, KGCOOP_TEMPLATES) == (
        "a photo of a {}, a type of texture."
    )
    assert dataset_template(backbone, "oxford_pets", None, PROGRAD_TEMPLATES) == (
        "a type of pet, a photo of a {}."
    )
    assert dataset_template(backbone, "eurosat", None, PROGRAD_TEMPLATES) == (
        "a centered satellite photo of {}."
    )
    # a dataset outside the tables: the backbone's own template
    assert dataset_template(backbone, "folder:x", None, PROGRAD_TEMPLATES) == "a photo of a {}."
    assert template_phrase("a type of pet, a photo of a {}.") == "a type of pet, a photo of a"
    with pytest.raises(ValueError, match="exactly once"):
        dataset_template(backbone, None, "no slot", KGCOOP_TEMPLATES)


# --------------------------------------------------------------------------- construction


def test_kgcoop_prompt_is_the_official_one_and_starts_at_zero_shot(backbone, task):
    method = KgCoOp(init="official")
    method.prepare(backbone, task["names"])
    learner = method.learner
    ids = backbone.tokenizer(["a photo of a"])
    with torch.no_grad():
        official_ctx = backbone.model.token_embedding(ids)[0, 1:5].float()
    torch.testing.assert_close(learner.ctx, official_ctx)  # n_ctx = 4 words, from the phrase
    embeddings, ids = official_prompts(backbone, "a photo of a", official_ctx, NAMES)
    with torch.no_grad():
        torch.testing.assert_close(
            method.text_features(NAMES), encode(backbone, embeddings, ids), atol=2e-6, rtol=1e-5
        )
        # at init the logits are zero-shot CLIP's with "a photo of a {}."
        f = task["features"].val
        close(method.feature_logits(f, task["names"]), zero_shot_logits(backbone, f, task["names"]))
    # the hand-crafted features of the training classes are the frozen ones
    expected = frozen(backbone, [f"a photo of a {n}." for n in task["names"]])
    torch.testing.assert_close(method.hand_crafted, expected, atol=2e-6, rtol=1e-5)


def test_prograd_prompt_is_the_official_one(backbone):
    """Official: ctx (16, w) zeros, the last 4 rows the embeddings of "a photo of a", the
    prompt text "X X ... X a photo of a {name}."."""
    method = ProGrad()
    method.prepare(backbone, NAMES)
    ids = backbone.tokenizer(["a photo of a"])
    with torch.no_grad():
        phrase = backbone.model.token_embedding(ids)[0, 1:5].float()
    official_ctx = torch.zeros(16, phrase.shape[-1])
    official_ctx[12:] = phrase
    torch.testing.assert_close(method.learner.ctx, official_ctx)
    assert method.learner.context_words == "X " * 12 + "a photo of a"
    embeddings, ids = official_prompts(backbone, "X " * 12 + "a photo of a", official_ctx, NAMES)
    with torch.no_grad():
        torch.testing.assert_close(
            method.text_features(NAMES), encode(backbone, embeddings, ids), atol=2e-6, rtol=1e-5
        )
    with pytest.raises(ValueError, match="n_ctx"):
        ProGrad(n_ctx=2).prepare(backbone, NAMES)


def test_prograd_with_the_phrase_alone_starts_at_zero_shot(backbone, task):
    method = ProGrad(n_ctx=4)
    method.prepare(backbone, task["names"])
    f = task["features"].val
    with torch.no_grad():
        zs = backbone.logit_scale * f @ method.zero_shot.T
        close(method.feature_logits(f, task["names"]), zs)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_ensemble_is_the_official_construction(backbone, position):
    tower = TextTower(backbone.model)
    generator = torch.Generator().manual_seed(0)
    ensemble = PromptEnsemble(tower, backbone.tokenizer, 3, 4, (position,) * 3, generator=generator)
    with torch.no_grad():
        ours = F.normalize(ensemble(NAMES), dim=-1)  # (K, C, d)
        for k in range(3):
            emb, ids = official_prompts(backbone, "X X X X", ensemble.ctx[k], NAMES, position)
            torch.testing.assert_close(ours[k], encode(backbone, emb, ids), atol=2e-6, rtol=1e-5)
        # a subset of prompts gives the same rows
        sub = F.normalize(ensemble(NAMES, torch.tensor([2, 0])), dim=-1)
        torch.testing.assert_close(sub, ours[[2, 0]])
        # the context-only prompt "[SOS] ctx . [EOT]"
        ids = backbone.tokenizer(["X X X X ."])
        emb = backbone.model.token_embedding(ids).float()
        emb = torch.cat([emb[:, :1], ensemble.ctx[1:2], emb[:, 5:]], dim=1)
        expected = encode(backbone, emb, ids)
        got = F.normalize(ensemble.context_features(), dim=-1)[1:2]
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


def test_proda_layout_mixes_positions():
    assert proda_positions(8) == ("front",) * 2 + ("middle",) * 2 + ("end",) * 4
    assert proda_positions(1) == ("end",)
    assert proda_positions(3, "middle") == ("middle",) * 3


def test_proda_from_a_phrase_at_the_end_starts_at_zero_shot(backbone, task):
    method = ProDA(init="official", layout="end", n_prompts=3)
    method.prepare(backbone, task["names"])
    f = task["features"].val
    with torch.no_grad():
        method.learner.eval()
        close(method.feature_logits(f, task["names"]), zero_shot_logits(backbone, f, task["names"]))


# --------------------------------------------------------------------------- losses


def test_knowledge_loss_hand_computed():
    learned = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    hand = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(knowledge_loss(learned, hand)) == pytest.approx(0.5)  # 1 - (1 + 0) / 2


def test_prograd_projection_hand_computed():
    """ce = a.v, kl = b.v: G_ce = a, G_kl = b."""
    v = torch.zeros(2, requires_grad=True)

    def grads(a, b, weight=1.0):
        ce, kl = (torch.tensor(a) * v).sum(), (torch.tensor(b) * v).sum()
        return prograd_gradients([v], ce, kl, weight)[0]

    # disagreeing: the component of a along -b_hat is removed, G is orthogonal to b
    torch.testing.assert_close(grads([1.0, 0.0], [-1.0, 1.0]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(grads([1.0, 0.0], [-1.0, 1.0], 0.5), torch.tensor([0.75, 0.25]))
    # agreeing (a.b >= 0): G_ce unchanged
    torch.testing.assert_close(grads([1.0, 0.0], [1.0, 1.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(grads([1.0, 0.0], [0.0, 1.0]), torch.tensor([1.0, 0.0]))
    # the surrogate has the value of ce and the projected gradient
    ce = (torch.tensor([1.0, 0.0]) * (v + 1)).sum()
    kl = (torch.tensor([-1.0, 1.0]) * v).sum()
    out = with_gradients(ce, [v], prograd_gradients([v], ce, kl))
    out.backward()
    assert float(out.detach()) == pytest.approx(1.0)
    torch.testing.assert_close(v.grad, torch.tensor([0.5, 0.5]))


def test_distillation_loss_hand_computed():
    student, teacher = torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2)
    # -(1/2 log 1/4 + 1/2 log 3/4)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert float(distillation_loss(student, teacher)) == pytest.approx(expected)
    # T = 2: T^2 * CE(softmax(teacher / 2), softmax(student / 2))
    p = torch.softmax(student / 2, -1)[0]
    expected = 4 * -(0.5 * math.log(p[0]) + 0.5 * math.log(p[1]))
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(expected)


def test_proda_logits_hand_computed():
    """K = 2, C = 2, d = 2: t_1 = (e1, e2), t_2 = (e2, e1) for classes (0, 1); f = e1, y = 0,
    s = 1. mu = (0.5, 0.5) for both; per dimension 0: Sigma_00 = Sigma_11 = 1/6 and
    Sigma_01 = -1/6 (normalised by K + 1 = 3); f^T(Sigma_11 + Sigma_00 - 2 Sigma_01)f = 2/3."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    text = torch.stack([torch.stack([e1, e2]), torch.stack([e2, e1])])  # (K, C, d)
    logits = proda_logits(e1[None], text, torch.tensor([0]), 1.0)
    torch.testing.assert_close(logits, torch.tensor([[0.5, 0.5 + 0.5 * 2 / 3]]))
    # the unbiased normaliser (K - 1): variances 3x larger
    logits = proda_logits(e1[None], text, torch.tensor([0]), 1.0, cov_ddof=1)
    torch.testing.assert_close(logits, torch.tensor([[0.5, 0.5 + 0.5 * 2.0]]))


def test_proda_logits_equal_the_explicit_covariance():
    """Against the full (d, C, C) per-dimension covariance of the readable implementations."""
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(5, 4, 6, generator=g), dim=-1)
    f = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    y = torch.tensor([2, 0, 2])
    s = 10.0
    mean = text.mean(0)
    c = text - mean
    cov = torch.einsum("kid,kjd->dij", c, c) / 6  # (d, C, C)
    r = torch.einsum("bd,dij->bij", f**2, cov)
    b = torch.arange(3)
    sigma = r[b, y, y][:, None] + torch.diagonal(r, dim1=1, dim2=2) - 2 * r[b, y, :]
    expected = s * f @ mean.T + 0.5 * s**2 * sigma
    torch.testing.assert_close(proda_logits(f, text, y, s), expected, atol=1e-5, rtol=1e-5)
    # identical prompts: no variance, the mean classifier's logits
    same = text[:1].expand(5, -1, -1)
    torch.testing.assert_close(proda_logits(f, same, y, s), s * f @ text[0].T)
    normed = proda_logits(f, same, y, s, normalize_mean=True)
    torch.testing.assert_close(normed, s * f @ text[0].T)  # unit rows stay unit


def test_diversity_loss_hand_computed():
    h = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert float(diversity_loss(h)) == pytest.approx(math.sqrt(2) / 3)  # |cos|: 0, .707, .707
    assert float(diversity_loss(h[:1])) == 0.0


# --------------------------------------------------------------------------- learning


def fit(method, backbone, task, seed=1):
    return method.fit(
        backbone, task["train"], task["val"], task["names"], seed=seed, features=task["features"]
    )


def zero_shot_accuracy(backbone, task):
    features, labels = task["features"].val, task["features"].val_labels
    return accuracy(zero_shot_logits(backbone, features, task["names"]), labels)


def test_kgcoop_learns_and_its_term_keeps_the_prompt_near_the_hand_crafted_one(backbone, task):
    kw = dict(lr=0.02, **FAST)
    kept, free = KgCoOp(weight=8.0, **kw), KgCoOp(weight=0.0, **kw)
    fit(kept, backbone, task)
    result = fit(free, backbone, task)
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    assert result.best_val_acc >= zero_shot_accuracy(backbone, task) + 10
    with torch.no_grad():
        distance = [
            float(knowledge_loss(m.text_features(task["names"]), m.hand_crafted))
            for m in (kept, free)
        ]
    assert distance[0] < 0.5 * distance[1], distance
    kept.logits(backbone, task["new"][:2], task["new_names"])  # transfers to new classes


def test_prograd_agrees_with_zero_shot_more_than_plain_cross_entropy(backbone, task):
    """weight 0 is CoOp's gradient; weight 1 removes what opposes the zero-shot prediction,
    so the trained model's KL to zero-shot stays lower."""
    kw = dict(lr=0.02, n_ctx=4, **FAST)
    prograd, plain = ProGrad(weight=1.0, **kw), ProGrad(weight=0.0, **kw)
    fit(prograd, backbone, task)
    result = fit(plain, backbone, task)
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    f = task["features"].val
    with torch.no_grad():
        kls = []
        for m in (prograd, plain):
            teacher = m.logit_scale * f @ m.zero_shot.T
            kls.append(float(distillation_loss(m.feature_logits(f, task["names"]), teacher)))
    assert kls[0] < kls[1], kls


def test_proda_learns_and_is_deterministic(backbone, task):
    kw = dict(lr=0.02, n_prompts=2, n_ctx=4, **FAST)
    a, b = ProDA(**kw), ProDA(**kw)
    result = fit(a, backbone, task)
    fit(b, backbone, task)
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    assert result.best_val_acc >= zero_shot_accuracy(backbone, task) + 10
    torch.testing.assert_close(a.learner.ctx, b.learner.ctx)
    logits = a.logits(backbone, task["new"], task["new_names"])
    assert logits.shape == (len(task["new"]), 4)
    # prompt batches: two of the four prompts per step, every prompt trained
    c = ProDA(prompt_batch=2, **{**kw, "n_prompts": 4, "epochs": 2})
    c.prepare(backbone, task["names"], seed=1)
    start = c.learner.ctx.detach().clone()
    fit(c, backbone, task)
    assert (c.learner.ctx - start).flatten(1).norm(dim=1).min() > 0


def test_proda_classifier_is_the_selected_epochs(backbone, task):
    """Validation caches the mean classifier of each epoch; after fit restores an earlier
    epoch (here epoch 1: ties to the first), the classifier is that epoch's, not the last."""
    kw = dict(lr=0.05, n_prompts=2, n_ctx=4, ties="first", **{**FAST, "epochs": 6})
    method = ProDA(**kw)
    result = fit(method, backbone, task, seed=3)
    assert result.best_epoch < len(result.history) - 1
    f = task["features"].val
    with torch.no_grad():
        fresh = method.logit_scale * f @ method.prompt_features(task["names"]).mean(0).T
        torch.testing.assert_close(method.feature_logits(f, task["names"]), fresh)


@pytest.mark.parametrize("cls", [KgCoOp, ProGrad, ProDA])
def test_mixed_precision_on_cpu(cls, task):
    """bf16 autocast (what a GPU run does in fp16): finite losses and float32 logits; ProGrad
    takes both gradients under autocast."""
    bf16 = load_backbone("fewclip-test-vit", None, device="cpu", precision="amp_bf16")
    extra = {"n_prompts": 2, "n_ctx": 4} if cls is ProDA else {}
    method = cls(epochs=2, batch_size=8, **extra)
    result = method.fit(bf16, task["train"], task["val"], task["names"], seed=0)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    logits = method.logits(bf16, task["test"][:3], task["names"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "name, init, expected",
    [
        ("coop", "backbone", "coop: init phrase 'a photo of a', the backbone's own words"),
        ("cocoop", "official", "cocoop: init phrase 'a photo of a', set by the options"),
        ("kgcoop", "backbone", "kgcoop: init phrase 'a photo of a', the backbone's own words"),
        ("proda", None, "proda: random context (class template 'a photo of a {}.'"),
    ],
)
def test_the_fit_notes_name_the_init_phrase_once(backbone, task, name, init, expected):
    """The text-side learners share one rule (``init_option``): the run key reads the
    backbone's words only for ``"backbone"``, and one note names the phrase."""
    options = {"epochs": 1, "batch_size": 8, "init": init}
    if name == "proda":
        options.update(n_prompts=2, n_ctx=2)
    method = get_method(name, **options)
    assert method.uses_backbone_words == (init == "backbone")
    notes = fit(method, backbone, task).notes
    phrase = [n for n in notes if n.startswith((f"{name}: init phrase", f"{name}: random"))]
    assert len(phrase) == 1 and phrase[0].startswith(expected), notes
