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
