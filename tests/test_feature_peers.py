"""The feature-level peers (GDA, APE, APE-T, TaskRes, LP++, CLAP / ZS-LP): hand-computed
small cases of each core formula, equality with transcriptions of the official code's
closed forms on seeded tensors, determinism, and learning on data with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_feature_data

from fewclip.methods import get_method
from fewclip.methods.ape import (
    channel_criterion,
    inter_class_similarity,
    key_divergence,
    key_divergence_one_hot,
    scaled_count,
)
from fewclip.methods.base import FeatureData, accuracy
from fewclip.methods.gda import gaussian_classifier, pooled_precision, shrunk_precision


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_data(num_classes=6, shots=8, dim=32, views=3, test_per_class=30)


def _fit(name: str, data: FeatureData, **options):
    method = get_method(name, **options)
    result = method.fit(data, seed=0)
    return method, result


def _axes_data(val: bool = True) -> FeatureData:
    """Two classes in 2-d, shots on the axes, text columns slightly off them."""
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    text = F.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), dim=0)  # (d, C) columns
    val_f = keys if val else keys[:0]
    return FeatureData(
        train_features=keys,
        train_labels=labels,
        train_views=keys[None],
        val_features=val_f,
        val_labels=labels[: val_f.shape[0]],
        classifiers={"positive": text},
        logit_scale=100.0,
    )


# --------------------------------------------------------------------------- GDA


def _official_gda(vecs, labels, clip_weights):
    """``main_few_shots.py``'s estimation, transcribed (float64 here)."""
    c = clip_weights.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(c)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(c)])
    d = center_vecs.shape[1]
    cov_inv = d * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov()
        + center_vecs.T.cov().trace() * torch.eye(d, dtype=vecs.dtype)
    )
    ps = torch.ones(c, dtype=vecs.dtype) * 1.0 / c
    w = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    return w, b


def test_gda_matches_the_official_estimator():
    g = torch.Generator().manual_seed(0)
    c, d, per = 4, 6, 5
    labels = torch.arange(c).repeat_interleave(per)
    vecs = F.normalize(torch.randn(c * per, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(d, c, generator=g, dtype=torch.float64), dim=0)
    w_ref, b_ref = _official_gda(vecs, labels, text)
    means = torch.stack([vecs[labels == i].mean(0) for i in range(c)])
    w, b = gaussian_classifier(means, shrunk_precision(vecs - means[labels]))
    torch.testing.assert_close(w, w_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b, b_ref, rtol=1e-9, atol=1e-9)


def test_gda_hand_computed_case():
    # identity precision: W = mu^T, b_c = log(1/2) - |mu_c|^2 / 2
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w, b = gaussian_classifier(means, torch.eye(2))
    assert torch.equal(w, means.T)
    torch.testing.assert_close(b, torch.tensor([math.log(0.5) - 0.5, math.log(0.5) - 2.0]))
    # one class per axis, samples +-e at each mean: centred rows are +-e_k, S = diag
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # S = x^T x / 3 = 2/3 I, (N - 1) S + tr(S) I = 2 I + 4/3 I, P = d / (10/3) I = 0.6 I
    torch.testing.assert_close(shrunk_precision(x), 0.6 * torch.eye(2))
    # the pooled estimator: per-class covariance of {+-e_1} is diag(2, 0), of {+-e_2} diag(0, 2)
    pooled = pooled_precision(x, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(pooled, torch.eye(2))


def test_gda_alpha_search_is_the_official_loop(synthetic):
    data, _, _ = synthetic
    method, result = _fit("gda", data)
    f = data.val_features
    best, chosen = 0.0, 0.1
    for alpha in (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0):
        logits = data.logit_scale * f @ data.classifiers["positive"] + alpha * (
            f @ method.weights + method.bias
        )
        acc = accuracy(logits, data.val_labels)
        if acc > best:
            best, chosen = acc, alpha
    assert result.chosen["alpha"] == chosen and result.best_val_acc == best


def test_gda_is_deterministic_and_learns(synthetic):
    data, test_f, test_y = synthetic
    first, _ = _fit("gda", data)
    second, _ = _fit("gda", data)
    assert torch.equal(first.logits(test_f), second.logits(test_f))
    zero_shot, _ = _fit("zero_shot", data)
    assert accuracy(first.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 20


def test_gda_new_classes_follow_the_official_synthesis(synthetic):
    data, test_f, _ = synthetic
    method, _ = _fit("gda", data, synth_k=5, synth_text_weight=3)
    new_text = data.classifiers["positive"][:, :3]
    vecs, d, k = method.samples_x, data.dim, 5
    mus, invs = [], []
    for w in new_text.T:  # main_base2new.py, transcribed (512 -> d, 16 -> 3)
        near = vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]]
        mus.append(torch.cat([near, w.unsqueeze(0).repeat(3, 1)]).mean(dim=0))
        cov = (near - w[None]).T @ (near - w[None]) / (k - 1)
        invs.append(d * torch.linalg.pinv((k - 1) * cov + cov.trace() * torch.eye(d)))
    w_ref, b_ref = gaussian_classifier(torch.stack(mus), torch.stack(invs).mean(0))
    w, b = method.new_class_classifier(new_text)
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(b, b_ref)
    logits = method.logits_for(test_f, new_text)
    assert logits.shape == (test_f.shape[0], 3) and torch.isfinite(logits).all()


def test_gda_pooled_covariance_under_base_to_new(synthetic):
    data, _, _ = synthetic
    assert get_method("gda", protocol="base_to_new").covariance() == "pooled"
    assert get_method("gda").covariance() == "shrunk"
    with pytest.raises(ValueError, match="covariance"):
        get_method("gda", covariance="diagonal")


# --------------------------------------------------------------------------- APE


def _official_similarity(text, keys, cate_num, shots):
    """``cal_criterion``'s loop (only_use_txt=False), transcribed."""
    feat_dim = text.shape[0]
    feats = torch.cat([text.t().unsqueeze(1), keys.reshape(cate_num, shots, feat_dim)], dim=1)
    samp_num = feats.shape[1]
    sim_sum, count = torch.zeros(feat_dim, dtype=text.dtype), 0
    for i in range(cate_num):
        for j in range(cate_num):
            for m in range(samp_num):
                for n in range(samp_num):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, n, :]
                        count += 1
    return sim_sum / count


def test_ape_criterion_matches_the_official_loop():
    g = torch.Generator().manual_seed(1)
    c, k, d = 3, 2, 5
    text = F.normalize(torch.randn(d, c, generator=g, dtype=torch.float64), dim=0)
    keys = F.normalize(torch.randn(c * k, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.arange(c).repeat_interleave(k)
    sim = inter_class_similarity(text, keys, labels)
    torch.testing.assert_close(sim, _official_similarity(text, keys, c, k))
    crit = channel_criterion(text, keys, labels, (0.3, 0.7))
    torch.testing.assert_close(crit, -0.3 * sim + 0.7 * torch.var(text, dim=1))


def test_ape_criterion_hand_computed():
    # classes {t_0 = e_1, key e_1} and {t_1 = e_2, key e_2}: every cross pair is e_1 * e_2 = 0
    text = torch.eye(2)
    keys = torch.eye(2)
    sim = inter_class_similarity(text, keys, torch.tensor([0, 1]))
    assert torch.equal(sim, torch.zeros(2))
    # both classes along e_1: the 2 x 2 x 2 = 8 cross pairs (of 8) give 1 on channel 0
    both = torch.tensor([[1.0, 1.0], [0, 0]])
    sim = inter_class_similarity(both, keys[[0, 0]], torch.tensor([0, 1]))
    assert torch.equal(sim, torch.tensor([1.0, 0.0]))
    assert scaled_count(800, 1024) == 800 and scaled_count(800, 512) == 400
    assert scaled_count(800, 1) == 1


def test_ape_divergence_hand_computed():
    keys, text = torch.eye(2), torch.eye(2)
    values = torch.eye(2)
    p = torch.softmax(torch.eye(2), 1)[0, 0]  # each key's own class: e / (e + 1)
    expected = math.log2((1 + 1e-6) / (float(p) + 1e-6))
    torch.testing.assert_close(key_divergence(keys, text, values), torch.full((2,), expected))


@pytest.mark.parametrize("seed", range(3))
def test_ape_divergence_one_hot_equals_the_plain_formula(seed):
    """The one-hot form gives the plain sum over classes bit for bit (shuffled labels,
    sharp and flat predictions)."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(60, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(16, 7, generator=g), dim=0) * (1 + 20 * seed)
    labels = torch.randint(0, 7, (60,), generator=g)
    plain = key_divergence(keys, text, F.one_hot(labels, 7).float())
    assert torch.equal(key_divergence_one_hot(keys, text, labels), plain)


def test_ape_search_is_the_official_triple_loop(synthetic):
    data, _, _ = synthetic
    options = {"steps": (6, 5, 4), "search_scale": (7.0, 7.0, 1.0)}
    method, result = _fit("ape", data, **options)
    betas, alphas, gammas = method.grids(data)
    best, chosen = -1, None
    for beta in betas:  # the official order: beta, alpha, gamma; first strict best
        for alpha in alphas:
            for gamma in gammas:
                logits = method.logits(data.val_features, beta=beta, alpha=alpha, gamma=gamma)
                correct = int((logits.argmax(1) == data.val_labels).sum())
                if correct > best:
                    best, chosen = correct, (beta, alpha, gamma)
    assert (result.chosen["beta"], result.chosen["alpha"], result.chosen["gamma"]) == chosen


def test_ape_forward_hand_computed():
    data = _axes_data()
    method, _ = _fit("ape", data, search=False, feat_num=2, init_alpha=2.0, init_gamma=0.0)
    f = torch.tensor([[1.0, 0.0]])
    beta = method.beta
    text = data.classifiers["positive"]
    # gamma 0: values are one-hot; affinities to the keys 1, 1, 0, 0
    cache = torch.tensor([[2.0, 2 * math.exp(-beta)]])
    expected = 100.0 * f @ text + 2.0 * cache
    torch.testing.assert_close(method.logits(f), expected)


def test_ape_is_deterministic_and_learns(synthetic):
    data, test_f, test_y = synthetic
    first, _ = _fit("ape", data)
    second, _ = _fit("ape", data)
    assert torch.equal(first.logits(test_f), second.logits(test_f))
    zero_shot, _ = _fit("zero_shot", data)
    assert accuracy(first.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 20


# --------------------------------------------------------------------------- APE-T


def test_ape_t_refines_keys_text_and_values_hand_computed():
    from fewclip.methods.ape_t import CategoryResidual

    keys = torch.eye(3)[:2]  # two entries, classes 0 and 1
    text = torch.eye(3)[:, :2]
    module = CategoryResidual(keys, torch.tensor([0, 1]), text, torch.tensor([2, 0]), 10.0)
    with torch.no_grad():
        module.residual.copy_(torch.tensor([[0.5, 0.1], [0.2, 0.3]]))  # (C, Q), Q = [2, 0]
        module.value_weights.copy_(torch.tensor([[2.0], [3.0]]))
    k, w, v = module.refined()
    assert torch.equal(k, torch.tensor([[1.1, 0.0, 0.5], [0.3, 1.0, 0.2]]))
    assert torch.equal(w, torch.tensor([[1.1, 0.3], [0.0, 1.0], [0.5, 0.2]]))
    assert torch.equal(v, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))


def test_ape_t_at_its_start_is_the_tip_adapter_forward(synthetic):
    data, test_f, _ = synthetic
    method, _ = _fit("ape_t", data, epochs=0, search=False, init_alpha=1.5)
    beta = method.beta
    keys, text = data.cache_keys, data.classifiers["positive"]
    expected = data.logit_scale * test_f @ text + 1.5 * (
        torch.exp(-beta * (1 - test_f @ keys.T)) @ data.cache_values
    )
    torch.testing.assert_close(method.logits(test_f), expected)


def test_ape_t_learns_and_is_seeded(synthetic):
    data, test_f, test_y = synthetic
    first, result = _fit("ape_t", data, epochs=10, steps=(20, 10, 1))
    second, _ = _fit("ape_t", data, epochs=10, steps=(20, 10, 1))
    assert torch.equal(first.logits(test_f), second.logits(test_f))
    assert result.chosen["training_feat_num"] == scaled_count(900, data.dim)
    assert first.trainable_parameters() == 6 * scaled_count(900, data.dim) + 6 * 8
    zero_shot, _ = _fit("zero_shot", data)
    assert accuracy(first.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 10


# --------------------------------------------------------------------------- TaskRes


def test_taskres_hand_computed_and_zero_start():
    from fewclip.methods.taskres import TaskResidual, taskres_defaults

    module = TaskResidual(torch.eye(2), 10.0, alpha=0.5)
    with torch.no_grad():
        module.residual.copy_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    # column 1: (0, 1) + 0.5 (2, 0) = (1, 1) -> (1, 1) / sqrt(2)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(module.classifier(), torch.tensor([[1.0, r], [0.0, r]]))
    assert taskres_defaults("oxford_flowers", 16) == (2e-3, 1.0, 200)
    assert taskres_defaults("imagenet", 4) == (2e-4, 0.5, 100)
    data = _axes_data()
    method, _ = _fit("taskres", data, epochs=0)
    zero_shot, _ = _fit("zero_shot", data)
    f = torch.randn(5, 2)
    torch.testing.assert_close(method.logits(f), zero_shot.logits(f))


def test_taskres_learns_keeps_the_last_epoch_and_is_seeded(synthetic):
    data, test_f, test_y = synthetic
    first, result = _fit("taskres", data, epochs=30, lr=0.05)
    second, _ = _fit("taskres", data, epochs=30, lr=0.05)
    assert torch.equal(first.logits(test_f), second.logits(test_f))
    assert result.best_epoch == 29 and result.chosen["selection"] == "last"
    zero_shot, _ = _fit("zero_shot", data)
    assert accuracy(first.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 20
    assert first.trainable_parameters() == data.dim * data.num_classes


def test_taskres_base_from_a_tensor_file(synthetic, tmp_path):
    data, test_f, _ = synthetic
    path = tmp_path / "base.pt"
    torch.save(data.classifiers["positive"] * 2, path)  # the same directions
    method, _ = _fit("taskres", data, epochs=0, base=str(path))
    zero_shot, _ = _fit("zero_shot", data)
    torch.testing.assert_close(method.logits(test_f), zero_shot.logits(test_f))
    with pytest.raises(ValueError, match="neither a cached classifier"):
        _fit("taskres", data, epochs=0, base=str(tmp_path / "missing.pt"))


# --------------------------------------------------------------------------- CLAP / ZS-LP


def test_clap_class_adaptive_weights_hand_computed():
    from fewclip.methods.clap import ZeroShotProbe, class_adaptive_weights

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # class 0: mean of p_0 = 0.5 and 0.75; class 1: p_1 = 0.5
    weights = class_adaptive_weights(logits, labels)
    torch.testing.assert_close(weights, torch.tensor([0.625, 0.5]))
    probe = ZeroShotProbe(torch.eye(2), 1.0)
    with torch.no_grad():
        probe.prototypes.add_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    # mean_c lambda_c ||P_c - W_c||^2 = (0.625 * 4 + 0.5 * 0) / 2
    torch.testing.assert_close(probe.penalty(weights), torch.tensor(1.25))


def test_clap_starts_at_zero_shot_and_the_constraint_holds_it_closer(synthetic):
    data, test_f, test_y = synthetic
    start, _ = _fit("clap", data, epochs=0)
    zero_shot, _ = _fit("zero_shot", data)
    torch.testing.assert_close(start.logits(test_f), zero_shot.logits(test_f))
    clap, result = _fit("clap", data, epochs=20)
    zs_lp, _ = _fit("clap", data, epochs=20, constraint="none")
    text = data.classifiers["positive"].T

    def drift(m):
        return float((m.module.prototypes.detach() - text).pow(2).sum())

    assert drift(clap) < drift(zs_lp)
    assert result.chosen["constraint"] == "l2" and 0 < result.chosen["lambda_mean"] < 1
    for m in (clap, zs_lp):
        assert accuracy(m.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 20
    again, _ = _fit("clap", data, epochs=20)
    assert torch.equal(again.logits(test_f), clap.logits(test_f))


def test_clap_uses_no_validation_data(synthetic):
    data, test_f, _ = synthetic
    method, _ = _fit("clap", data, epochs=5)
    shuffled = FeatureData(**{**data.__dict__, "val_labels": data.val_labels.flip(0)})
    other, _ = _fit("clap", shuffled, epochs=5)
    assert torch.equal(method.logits(test_f), other.logits(test_f))


# --------------------------------------------------------------------------- LP++


def test_lp_pp_step_sizes_match_the_official_formulas(synthetic):
    import numpy as np
    from scipy.linalg import eigh

    from fewclip.methods.lp_pp import init_blend, lr_blend, lr_visual

    data, _, _ = synthetic
    x, y, w = data.view(0), data.train_labels, data.classifiers["positive"]
    shots = 8
    # calculate_lr_w, calculate_lr_alpha, calculate_init_alpha, transcribed
    eig, _ = eigh((x.T @ x).cpu().numpy())
    assert lr_visual(x) == pytest.approx(4 * x.shape[0] / max(eig), rel=1e-6)
    temp = torch.sum(torch.pow(x @ w, 2), dim=0)
    assert lr_blend(x, w) == pytest.approx(float(x.shape[0] / (max(temp) * 4)), rel=1e-6)
    one_hot = F.one_hot(y, 6).float()
    alpha_tilde = ((one_hot[..., None] * (x @ w)[:, None, :]) / one_hot.sum(0)[None, :, None]).sum(
        0
    )
    alpha_init = 250 / shots * (alpha_tilde.double() * shots)
    assert init_blend(x, y, w) == pytest.approx(float(torch.mean(alpha_init)), rel=1e-5)
    assert np.isfinite(lr_visual(x))


def test_lp_pp_hand_computed_start_and_alpha_steps():
    from fewclip.methods.lp_pp import LinearProbePP

    module = LinearProbePP(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.eye(2), 3.0)
    with torch.no_grad():
        module.linear.bias.zero_()
    x = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(module(x), torch.tensor([[2.0 + 3.0, 0.0]]))
    data = _axes_data()
    # alpha steps only every alpha_every epochs: with 9 epochs and the default 10, none
    method, result = _fit("lp_pp", data, epochs=9)
    assert torch.all(method.module.alpha == result.chosen["alpha_init"])


def test_lp_pp_alpha_gradient_accumulates_as_the_official_code(synthetic):
    data, _, _ = synthetic
    options = {"epochs": 2, "alpha_every": 1, "selection": "last"}
    accumulated, _ = _fit("lp_pp", data, **options)
    current, _ = _fit("lp_pp", data, **options, alpha_grad="current")
    one, result = _fit("lp_pp", data, **{**options, "epochs": 1})
    # after one epoch both are a_0 - lr_a g_0; the second step adds g_0 again when accumulating
    g0 = (result.chosen["alpha_init"] - one.module.alpha) / result.chosen["lr_alpha"]
    torch.testing.assert_close(
        accumulated.module.alpha - current.module.alpha, -result.chosen["lr_alpha"] * g0
    )
    assert not torch.equal(accumulated.module.alpha, current.module.alpha)


def test_lp_pp_learns_and_selects(synthetic):
    data, test_f, test_y = synthetic
    method, result = _fit("lp_pp", data, epochs=50)
    again, _ = _fit("lp_pp", data, epochs=50)
    assert torch.equal(method.logits(test_f), again.logits(test_f))
    accs = [h["val_acc"] for h in result.history]
    best = max(accs)
    assert result.best_epoch == max(i for i, a in enumerate(accs) if a == best)  # ties: later
    last, result = _fit("lp_pp", data, epochs=50, selection="last")
    assert result.best_epoch == 49 and "val_acc" not in result.history[0]
    zero_shot, _ = _fit("zero_shot", data)
    assert accuracy(last.logits(test_f), test_y) > accuracy(zero_shot.logits(test_f), test_y) + 20


# --------------------------------------------------------------------------- protocols

PEERS = {
    "gda": {},
    "ape": {"steps": (10, 4, 2)},
    "ape_t": {"epochs": 1, "steps": (10, 4, 1)},
    "taskres": {"epochs": 1},
    "clap": {"epochs": 1},
    "lp_pp": {"epochs": 2},
}


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    from fewclip.prompting.toy import coloured_squares

    data = tmp_path_factory.mktemp("peers")
    coloured_squares(data / "squares", num_classes=4, per_class=12, seed=0)
    coloured_squares(data / "squares_b", num_classes=2, per_class=12, seed=1, offset=4)
    return data


def _config(root, method, **kw):
    from fewclip.config import RunConfig

    base = dict(
        method=method,
        dataset="folder:squares",
        backbone="fewclip-test-rn",
        pretrained=None,
        shots=2,
        augment_views=2,
        options=PEERS.get(method, {}),
        data_root=str(root),
        cache_dir=str(root / "cache"),
        progress=False,
    )
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("method", sorted(PEERS))
def test_every_peer_runs_under_every_protocol_or_refuses_in_one_sentence(squares, method):
    from fewclip.runner import run, transfers_to_new_classes

    record = run(
        _config(squares, method, protocol="domain_generalisation", eval_datasets=["folder:squares"])
    )
    assert record["metrics"]["transfer"]["folder:squares"] == pytest.approx(record["accuracy"])
    new_classes = [
        ("base_to_new", {}),
        ("cross_dataset", {"eval_datasets": ["folder:squares_b"]}),
    ]
    for protocol, extra in new_classes:
        config = _config(squares, method, protocol=protocol, **extra)
        if method == "gda":
            assert transfers_to_new_classes(get_method(method))
            record = run(config)
            assert 0.0 <= record["accuracy"] <= 100.0
        else:
            with pytest.raises(ValueError, match="learns per-class parameters and cannot classify"):
                run(config)


def test_peers_run_from_the_command_line(squares, tmp_path, capsys):
    from fewclip.cli import main

    common = ["--backbone", "fewclip-test-rn", "--pretrained", "none", "--no-progress"]
    common += ["--data-root", str(squares), "--cache-dir", str(squares / "cache")]
    common += ["--results", str(tmp_path / "r.sqlite"), "--dataset", "folder:squares"]
    assert main(["run", "--method", "gda", "--shots", "2", *common]) == 0
    zs_lp = ["--option", "constraint=none", "--option", "epochs=1"]
    assert main(["run", "--method", "clap", "--shots", "2", *zs_lp, *common]) == 0
    assert main(["run", "--method", "clap", "--option", "constraint=l1", *common]) != 0
    assert "constraint must be one of" in capsys.readouterr().err


# --------------------------------------------------------------------------- val="none"

NO_VAL = {
    "zero_shot": {},
    "clap": {"epochs": 2},
    "taskres": {"epochs": 2},
    "lp_pp": {"epochs": 3},
    "coop": {"epochs": 1, "n_ctx": 2},
}


def test_no_val_methods_are_the_documented_fixed_settings():
    from fewclip.runner import no_val_methods

    fixed = set(no_val_methods())
    assert set(NO_VAL) <= fixed
    needs_val = {"gda", "ape", "ape_t", "tip_adapter", "tip_adapter_f", "dual_adapter"}
    assert not fixed & (needs_val | {"linear_probe", "clip_adapter"})


@pytest.mark.parametrize("method", sorted(NO_VAL))
def test_val_none_runs_the_fixed_setting_and_no_val_tensor_reaches_the_method(
    squares, method, monkeypatch
):
    import fewclip.protocols as protocols
    from fewclip.methods import METHODS
    from fewclip.runner import run

    seen: list = []
    real_feature_data = protocols.feature_data

    def spy_feature_data(*args, **kw):
        data, unreadable = real_feature_data(*args, **kw)
        seen.append(("features", data.val_features.shape[0], data.val_labels.numel()))
        return data, unreadable

    monkeypatch.setattr(protocols, "feature_data", spy_feature_data)
    real_fit = METHODS[method].fit

    def spy_fit(self, *args, **kw):
        if len(args) >= 3:  # an encoder method: fit(backbone, train, val, classnames, ...)
            seen.append(("items", len(args[2]), 0))
        return real_fit(self, *args, **kw)

    monkeypatch.setattr(METHODS[method], "fit", spy_fit)
    backbone = "fewclip-test-vit" if method == "coop" else "fewclip-test-rn"
    kw = {"options": NO_VAL[method], "backbone": backbone}
    record = run(_config(squares, method, val="none", **kw))
    assert seen and all(n == 0 and m == 0 for _, n, m in seen)
    assert record["config"]["val"] == "none" and record["metrics"]["val_images"] == 0
    assert any("val='none'" in note for note in record["notes"])
    fixed = METHODS[method].no_val_options
    assert all(record["options"][k] == v for k, v in fixed.items())
    if method != "zero_shot":
        assert record["metrics"]["best_val_accuracy"] is None
        assert all("val_acc" not in row for row in record["history"])


def test_val_none_refuses_methods_that_need_validation_in_one_sentence(squares):
    from fewclip.runner import check_config, run

    for method in ("gda", "ape", "tip_adapter"):
        with pytest.raises(ValueError, match="has no fixed setting for val='none'.*clap"):
            check_config(_config(squares, method, val="none"))
    with pytest.raises(ValueError, match="selection='val' selects on validation data"):
        run(_config(squares, "taskres", val="none", options={"selection": "val"}))
    from fewclip.config import RunConfig

    with pytest.raises(ValueError, match="val='none' sees no validation data"):
        RunConfig(val="none", selection="test")


def test_val_none_keeps_the_train_sample_and_changes_the_run_key(squares):
    from fewclip.data import load_dataset
    from fewclip.data.fewshot import few_shot_split

    dataset = load_dataset("folder:squares", squares)
    with_val = few_shot_split(dataset, 2, 1, val="few_shot")
    without = few_shot_split(dataset, 2, 1, val="none")
    assert [d.impath for d in without.train] == [d.impath for d in with_val.train]
    assert without.val == [] and with_val.val
    a, b = _config(squares, "clap"), _config(squares, "clap", val="none")
    assert a.run_key("w", "d") != b.run_key("w", "d")


# --------------------------------------------------------------------------- paper numbers


def test_paper_numbers_of_the_peers_name_their_source():
    from fewclip import paper

    gda = paper.load(paper="gda")
    assert set(gda["method"]) == {"gda", "zero_shot"}
    few = gda[(gda["method"] == "gda") & (gda["protocol"] == "few_shot")]
    assert len(few) == 11 * 5 and (few["backbone"] == "RN50").all()
    b2n = gda[gda["protocol"] == "base_to_new"].set_index(["dataset", "metric"])["value"]
    assert b2n[("imagenet", "base")] == pytest.approx(75.95)
    assert b2n[("imagenet", "hm")] == pytest.approx(2 * 75.95 * 69.79 / (75.95 + 69.79), abs=0.01)
    assert gda["source"].str.contains("mrflogs/ICLR24").all()
    for name in ("taskres", "lp_pp", "clap"):
        assert paper.load(paper=name).empty and "publishes no numbers" in paper.missing(name)
    assert len(paper.load(paper="ape", method="ape")) == len(
        paper.load(paper="ape", method="ape_t")
    )


def test_ape_cache_in_any_label_order_equals_the_blocked_one(synthetic):
    data, test_f, _ = synthetic
    order = torch.randperm(data.train_labels.numel(), generator=torch.Generator().manual_seed(3))
    shuffled = FeatureData(
        **{
            **data.__dict__,
            "train_features": data.train_features[order],
            "train_labels": data.train_labels[order],
            "train_views": data.train_views[:, order],
        }
    )
    options = {"search": False, "init_gamma": 0.5}
    blocked, _ = _fit("ape", data, **options)
    scattered, _ = _fit("ape", shuffled, **options)
    assert blocked.blocks.block_class is not None and scattered.blocks.block_class is None
    torch.testing.assert_close(blocked.logits(test_f), scattered.logits(test_f))
