"""Feature cache: keys, atomic writes, validation, unreadable images, augmented views, text."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from fewclip.backbones import load_backbone
from fewclip.data.base import Datum
from fewclip.features import (
    FeatureCache,
    FeatureKey,
    augmented_features,
    image_features,
    prompt_classifier,
    template_classifier,
)


def test_image_features_are_normalised_and_cached(test_rn, image_items, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    first = image_features(test_rn, image_items, cache, progress=False)
    assert first.features.shape == (len(image_items), test_rn.embed_dim)
    assert torch.allclose(first.features.norm(dim=-1), torch.ones(len(image_items)), atol=1e-5)
    assert first.valid.all() and cache.misses == 1 and cache.hits == 0
    again = image_features(test_rn, image_items, cache, progress=False)
    assert cache.hits == 1 and cache.misses == 1
    assert torch.equal(first.features, again.features)
    # the cached value equals a direct encoding
    direct = test_rn.encode_images(torch.stack([test_rn.preprocess(_open(d)) for d in image_items]))
    assert torch.allclose(direct, first.features, atol=1e-5)


def _open(d: Datum):
    from fewclip.images import load_rgb

    return load_rgb(d.impath)


def test_key_changes_with_weights_items_and_view(image_items, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    a = load_backbone("fewclip-test-rn", None, init_seed=0)
    b = load_backbone("fewclip-test-rn", None, init_seed=1)
    assert a.identity != b.identity
    image_features(a, image_items, cache, progress=False)
    image_features(b, image_items, cache, progress=False)
    image_features(a, image_items[:-1], cache, progress=False)
    relabelled = [Datum(d.impath, (d.label + 1) % 3, d.classname) for d in image_items]
    image_features(a, relabelled, cache, progress=False)
    assert cache.misses == 4 and cache.hits == 0
    k1 = FeatureKey("image", a.identity, "x", "aug(view=0)")
    k2 = FeatureKey("image", a.identity, "x", "aug(view=1)")
    assert k1.digest() != k2.digest()


def test_checkpoint_change_changes_identity(tmp_path):
    from fewclip.backbones import save_checkpoint

    bb = load_backbone("fewclip-test-rn", None)
    p = save_checkpoint(bb.model, tmp_path / "w.pt")
    first = load_backbone("fewclip-test-rn", str(p)).identity
    with torch.no_grad():
        bb.model.logit_scale.add_(1.0)
    save_checkpoint(bb.model, p)
    assert load_backbone("fewclip-test-rn", str(p)).identity != first


def test_killed_write_leaves_no_entry(test_rn, image_items, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half an entry")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        image_features(test_rn, image_items, cache, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert not list((tmp_path / "cache").rglob("*.pt"))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    image_features(test_rn, image_items, cache, progress=False)
    assert cache.hits == 0  # recomputed, nothing half-written was used


def test_corrupt_or_tampered_entry_is_recomputed(test_rn, image_items, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    good = image_features(test_rn, image_items, cache, progress=False)
    (path,) = list((tmp_path / "cache").rglob("*.pt"))
    entry = torch.load(path, weights_only=True)
    entry["tensors"]["features"][0, 0] += 1.0  # tampered content, stale checksum
    torch.save(entry, path)
    with pytest.warns(UserWarning, match="checksum mismatch"):
        again = image_features(test_rn, image_items, cache, progress=False)
    assert torch.equal(again.features, good.features)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        image_features(test_rn, image_items, cache, progress=False)
    assert cache.hits == 0


def test_unreadable_image_is_skipped_not_fatal(test_rn, image_items, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    items = image_items + [
        Datum(str(broken), 0, "class0"),
        Datum(str(tmp_path / "gone.png"), 1, "x"),
    ]
    with pytest.warns(UserWarning, match="unreadable"):
        out = image_features(test_rn, items, FeatureCache(None), progress=False)
    assert out.num_unreadable == 2
    assert out.valid.tolist() == [True] * len(image_items) + [False, False]
    feats, labels = out.dropped()
    assert feats.shape[0] == len(image_items) and labels.tolist() == [d.label for d in image_items]


def test_augmented_views_are_seeded_and_incremental(test_rn, image_items, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    two = augmented_features(test_rn, image_items, cache, views=2, seed=3, progress=False)
    assert two.features.shape == (2, len(image_items), test_rn.embed_dim)
    assert not torch.allclose(two.features[0], two.features[1])
    misses = cache.misses
    three = augmented_features(test_rn, image_items, cache, views=3, seed=3, progress=False)
    assert cache.misses == misses + 1  # only the new view was computed
    assert torch.equal(three.features[:2], two.features)
    fresh = augmented_features(
        test_rn, image_items, FeatureCache(None), views=2, seed=3, progress=False
    )
    assert torch.allclose(fresh.features, two.features, atol=1e-6)  # same seed, same crops
    other = augmented_features(
        test_rn, image_items, FeatureCache(None), views=1, seed=4, progress=False
    )
    assert not torch.allclose(other.features[0], two.features[0])


def test_prompt_classifier_is_mean_of_normalised(test_rn, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    prompts = [["a cat.", "a photo of a cat."], ["a dog."]]
    W = prompt_classifier(test_rn, prompts, cache)
    t = test_rn.encode_text(["a cat.", "a photo of a cat.", "a dog."])
    expected = torch.stack([F.normalize(t[:2].mean(0), dim=-1), t[2]]).T
    assert W.shape == (test_rn.embed_dim, 2)
    assert torch.allclose(W, expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        W2 = template_classifier(test_rn, ["cat", "dog"], ["a {}.", "a photo of a {}."], cache)
    assert cache.misses == 2
    cat_two_templates = F.normalize(
        test_rn.encode_text(["a cat.", "a photo of a cat."]).mean(0), dim=-1
    )
    assert torch.allclose(W2[:, 0], cat_two_templates, atol=1e-5)
    W3 = template_classifier(test_rn, ["cat", "dog"], ["a {}.", "a photo of a {}."], cache)
    assert cache.hits == 1 and torch.equal(W2, W3)


def test_cache_keys_average_raw_views_then_normalise():
    # two views of one image: raw x1 = 3 * (1, 0), x2 = 1 * (0, 1)
    # official: norm((x1 + x2) / 2) = norm((1.5, 0.5)) = (3, 1) / sqrt(10)
    # mean of normalised views would give (1, 1) / sqrt(2)
    from fewclip.methods.base import FeatureData

    views = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (V=2, M=1, d=2), normalised
    norms = torch.tensor([[3.0], [1.0]])  # (V, M)
    data = FeatureData(
        train_features=views[0],
        train_labels=torch.tensor([0]),
        train_views=views,
        val_features=views[0],
        val_labels=torch.tensor([0]),
        classifiers={"positive": torch.eye(2)},
        logit_scale=1.0,
        train_view_norms=norms,
    )
    expected = torch.tensor([[3.0, 1.0]]) / 10**0.5
    assert torch.allclose(data.cache_keys, expected, atol=1e-7)
    data.train_view_norms = None  # unknown norms: the views count as unit-norm
    assert torch.allclose(data.cache_keys, torch.tensor([[1.0, 1.0]]) / 2**0.5)


def test_augmented_views_keep_raw_norms_per_scale(test_rn, image_items, tmp_path):
    from fewclip.features import augmented_transform, encode_with_norms

    cache = FeatureCache(tmp_path / "cache")
    views = augmented_features(test_rn, image_items, cache, views=2, seed=3, progress=False)
    assert views.norms.shape == (2, len(image_items)) and (views.norms > 0).all()
    # the stored norms are those of the encoder output the features were normalised from
    loader_items = image_items[:2]
    from fewclip.images import image_loader

    images = next(iter(image_loader(loader_items, augmented_transform(test_rn), 32, seed=3 * 1009)))
    f, n = encode_with_norms(test_rn, images[0])
    assert torch.allclose(f, test_rn.encode_images(images[0]), atol=1e-6)
    assert torch.allclose(f, views.features[0, :2], atol=1e-5)
    assert torch.allclose(n, views.norms[0, :2], rtol=1e-5)
    # a second crop scale is a different cache entry; the first is reused
    misses = cache.misses
    augmented_features(test_rn, image_items, cache, views=2, seed=3, progress=False)
    assert cache.misses == misses
    other = augmented_features(
        test_rn, image_items, cache, views=2, seed=3, scale=(0.08, 1.0), progress=False
    )
    assert cache.misses == misses + 2
    assert not torch.allclose(other.features, views.features)
