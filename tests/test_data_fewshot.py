"""Few-shot sampling (CoOp's generate_fewshot_dataset), its disk cache, and base/new splits."""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter

import pytest

from fewclip.data import (
    Dataset,
    DatasetError,
    Datum,
    base_new_classes,
    base_new_split,
    few_shot_split,
    relabel,
    subsample_classes,
)
from fewclip.data.fewshot import cache_path


def make_dataset(root, train_sizes, val_sizes, test_per_class=2, names=None) -> Dataset:
    """Items interleaved across classes, label 1 appearing first (order of first appearance)."""
    names = names or [f"class_{c}" for c in range(len(train_sizes))]

    def items(part, sizes):
        out = []
        for i in range(max(sizes)):
            for c in (1, 0, *range(2, len(sizes))):
                if i < sizes[c]:
                    out.append(Datum(str(root / part / f"{c}_{i}.jpg"), c, names[c]))
        return out

    n = len(train_sizes)
    return Dataset(
        name="toy",
        classnames=[x.replace("_", " ") for x in names],
        train=items("train", train_sizes),
        val=items("val", val_sizes),
        test=items("test", [test_per_class] * n),
        templates=["a photo of a {}."],
        root=root,
    )


def coop_reference(ds: Dataset, shots: int, seed: int) -> tuple[list[Datum], list[Datum]]:
    """CoOp: random.seed(seed); generate_fewshot_dataset(train, K); then (val, min(K, 4))."""
    random.seed(seed)
    out = []
    for items, k in ((ds.train, shots), (ds.val, min(shots, 4))):
        groups: dict[int, list[Datum]] = {}
        for d in items:
            groups.setdefault(d.label, []).append(d)
        sample = []
        for group in groups.values():
            sample.extend(random.sample(group, k) if len(group) >= k else group)
        out.append(sample)
    return out[0], out[1]


@pytest.fixture
def toy(tmp_path):
    return make_dataset(tmp_path / "toy", [20, 18, 25], [8, 8, 8])


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_matches_coop_and_counts(toy, shots):
    split = few_shot_split(toy, shots, seed=3)
    train, val = coop_reference(toy, shots, 3)
    assert split.train == train and split.val == val
    assert Counter(d.label for d in split.train) == {0: shots, 1: shots, 2: shots}
    assert Counter(d.label for d in split.val) == {c: min(shots, 4) for c in range(3)}
    assert [d.label for d in split.train[:shots]] == [1] * shots  # first-appearance order
    assert set(split.train) <= set(toy.train) and set(split.val) <= set(toy.val)
    assert len(set(split.train)) == len(split.train)  # without replacement


def test_deterministic_and_seed_dependent(toy):
    a = few_shot_split(toy, 4, seed=1)
    assert few_shot_split(toy, 4, seed=1).train == a.train
    others = [few_shot_split(toy, 4, seed=s) for s in (2, 3)]
    assert all(o.train != a.train for o in others)
    assert all(o.val != a.val for o in others)


def test_too_few_images_names_class_and_count(tmp_path):
    ds = make_dataset(tmp_path, [20, 3, 20], [8, 8, 8], names=["cat", "rare_bird", "dog"])
    with pytest.raises(DatasetError, match=r"8 shots.*'rare_bird' has 3.*allow_fewer"):
        few_shot_split(ds, 8, seed=1)
    split = few_shot_split(ds, 8, seed=1, allow_fewer=True)
    assert Counter(d.label for d in split.train) == {0: 8, 1: 3, 2: 8}
    assert split.train == coop_reference(ds, 8, 1)[0]


def test_too_few_validation_images(tmp_path):
    ds = make_dataset(tmp_path, [20, 20], [8, 2])
    with pytest.raises(DatasetError, match="val split"):
        few_shot_split(ds, 4, seed=1)
    assert Counter(d.label for d in few_shot_split(ds, 2, seed=1).val) == {0: 2, 1: 2}


def test_cache_is_written_and_read_back(toy, tmp_path):
    cache = tmp_path / "cache"
    first = few_shot_split(toy, 4, seed=2, cache_dir=cache)
    path = cache_path(cache, toy, 4, 2)
    assert first.cache_path == path and path.is_file() and not first.from_cache
    assert path.parent.name == f"toy-{toy.fingerprint()}"
    raw = json.loads(path.read_text())
    assert (raw["shots"], raw["seed"]) == (4, 2)
    assert raw["train"][0][0].startswith("train/1_")  # relative to the dataset root
    again = few_shot_split(toy, 4, seed=2, cache_dir=cache)
    assert again.from_cache and again.train == first.train and again.val == first.val
    # an edited file (valid JSON, altered sample) is noticed by its checksum and redrawn
    raw["train"] = raw["train"][:1]
    path.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        redrawn = few_shot_split(toy, 4, seed=2, cache_dir=cache)
    assert not redrawn.from_cache and redrawn.train == first.train
    assert few_shot_split(toy, 4, seed=2, cache_dir=cache).from_cache  # rewritten intact
    # a file from before samples carried a checksum is drawn again, quietly (no false alarm)
    raw = json.loads(path.read_text())
    del raw["checksum"]
    path.write_text(json.dumps(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not few_shot_split(toy, 4, seed=2, cache_dir=cache).from_cache
    assert few_shot_split(toy, 4, seed=2, cache_dir=cache).from_cache
    # other K / seed: other files
    few_shot_split(toy, 2, seed=2, cache_dir=cache)
    few_shot_split(toy, 4, seed=3, cache_dir=cache)
    assert len(list(path.parent.glob("*.json"))) == 3
    assert not list(path.parent.glob("*.tmp"))


def test_cache_follows_the_data(toy, tmp_path):
    cache = tmp_path / "cache"
    few_shot_split(toy, 2, seed=1, cache_dir=cache)
    changed = make_dataset(toy.root, [20, 18, 26], [8, 8, 8])
    assert changed.fingerprint() != toy.fingerprint()
    assert not few_shot_split(changed, 2, seed=1, cache_dir=cache).from_cache
    moved = make_dataset(tmp_path / "elsewhere", [20, 18, 25], [8, 8, 8])
    assert moved.fingerprint() == toy.fingerprint()  # fingerprint of relative paths
    hit = few_shot_split(moved, 2, seed=1, cache_dir=cache)
    assert hit.from_cache and all(d.impath.startswith(str(moved.root)) for d in hit.train)


def test_corrupt_cache_is_resampled(toy, tmp_path):
    cache = tmp_path / "cache"
    first = few_shot_split(toy, 2, seed=1, cache_dir=cache)
    first.cache_path.write_text("{truncated")
    with pytest.warns(UserWarning, match="unreadable few-shot cache"):
        again = few_shot_split(toy, 2, seed=1, cache_dir=cache)
    assert again.train == first.train and not again.from_cache
    assert json.loads(first.cache_path.read_text())["shots"] == 2  # rewritten


def test_cache_does_not_bypass_the_count_check(tmp_path):
    ds = make_dataset(tmp_path, [20, 3], [8, 8])
    few_shot_split(ds, 8, seed=1, cache_dir=tmp_path / "c", allow_fewer=True)
    with pytest.raises(DatasetError, match="has 3"):
        few_shot_split(ds, 8, seed=1, cache_dir=tmp_path / "c")


def test_val_is_test_keeps_whole_val(toy):
    toy.val = list(toy.test)
    toy.extra["val_is_test"] = True
    split = few_shot_split(toy, 8, seed=1)
    assert split.val == toy.test
    assert split.train == coop_reference(toy, 8, 1)[0]


def test_zero_and_all_shots(toy):
    zero = few_shot_split(toy, 0, seed=1)
    assert zero.train == [] and zero.val == []
    full = few_shot_split(toy, -1, seed=1)
    assert full.train == toy.train and full.val == toy.val


def test_test_only_dataset_has_no_sample(tmp_path):
    ds = make_dataset(tmp_path, [5, 5], [2, 2])
    ds.train, ds.val = [], []
    with pytest.raises(DatasetError, match="no training split"):
        few_shot_split(ds, 1, seed=1)


# --- base / new ---------------------------------------------------------------------------------


def test_base_new_classes_ceil_half():
    assert base_new_classes(5) == ([0, 1, 2], [3, 4])
    assert base_new_classes(4) == ([0, 1], [2, 3])
    assert base_new_classes(101)[0] == list(range(51))
    with pytest.raises(DatasetError):
        base_new_classes(1)


def test_subsample_classes_relabels(tmp_path):
    ds = make_dataset(tmp_path, [3] * 5, [2] * 5, names=[f"c{c}" for c in range(5)])
    ds.extra["imagenet_indices"] = [10, 20, 30, 40, 50]
    base, new = base_new_split(ds)
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    assert {d.label for d in new.train} == {0, 1}
    assert [d.classname for d in new.test if d.label == 0] == ["c3", "c3"]
    assert all(d.impath.split("/")[-1].startswith(("3_", "4_")) for d in new.test)
    assert len(base.test) == 6 and len(new.val) == 4
    assert new.extra["class_indices"] == [3, 4]
    assert new.extra["imagenet_indices"] == [40, 50]
    assert ds.extra["imagenet_indices"] == [10, 20, 30, 40, 50]  # original untouched
    assert base.templates == ds.templates
    assert base.fingerprint() != ds.fingerprint()
    assert subsample_classes(ds, "all") is ds
    with pytest.raises(DatasetError, match="unknown class subset"):
        subsample_classes(ds, "novel")


def test_fewshot_then_subsample_is_coops_order(toy):
    base, _ = base_new_classes(toy)
    split = few_shot_split(toy, 4, seed=1).subsample(base)
    train, _ = coop_reference(toy, 4, 1)
    assert split.train == relabel(train, base)
    assert {d.label for d in split.train} == {0, 1}
    assert Counter(d.label for d in split.train) == {0: 4, 1: 4}


# --------------------------------------------------------------------------- val, label noise


def test_full_val_takes_the_whole_val_split(toy, tmp_path):
    split = few_shot_split(toy, 2, seed=1, val="full")
    assert split.val == list(toy.val) and split.val_split == "full"
    assert split.train == few_shot_split(toy, 2, seed=1).train  # same training sample
    cached = few_shot_split(toy, 2, seed=1, cache_dir=tmp_path / "c", val="full")
    assert cache_path(tmp_path / "c", toy, 2, 1, val="full").name == "shot_2-seed_1-val_full.json"
    assert few_shot_split(toy, 2, seed=1, cache_dir=tmp_path / "c", val="full").from_cache
    assert cached.val == list(toy.val)
    with pytest.raises(ValueError, match="val must be one of"):
        few_shot_split(toy, 2, seed=1, val="all")


def test_label_noise_flips_to_other_classes_seeded_and_nested(tmp_path):
    ds = make_dataset(tmp_path / "big", [40] * 5, [8] * 5)
    clean = few_shot_split(ds, 16, seed=4)
    noisy = {p: few_shot_split(ds, 16, seed=4, label_noise=p) for p in (0.1, 0.3)}
    for p, split in noisy.items():
        # same images in the same order; val untouched
        assert [d.impath for d in split.train] == [d.impath for d in clean.train]
        assert split.clean_train == clean.train and split.val == clean.val
        pairs = zip(split.train, clean.train, strict=True)
        flips = [i for i, (a, b) in enumerate(pairs) if a.label != b.label]
        assert split.flipped == len(flips)
        assert abs(len(flips) / 80 - p) < 0.12  # 80 shots, binomial spread
        for i in flips:  # a flipped label is another class, with its name
            d = split.train[i]
            assert d.label != clean.train[i].label and d.classname == ds.classnames[d.label]
    flips_01 = {i for i, d in enumerate(noisy[0.1].train) if d.label != clean.train[i].label}
    flips_03 = {i for i, d in enumerate(noisy[0.3].train) if d.label != clean.train[i].label}
    assert flips_01 < flips_03  # one uniform draw per shot: 0.1's flips are 0.3's too
    again = few_shot_split(ds, 16, seed=4, label_noise=0.3)
    assert again.train == noisy[0.3].train  # seeded
    other = few_shot_split(ds, 16, seed=5, label_noise=0.3)
    assert [d.label for d in other.train] != [d.label for d in again.train]
    assert few_shot_split(ds, 16, seed=4, label_noise=0.0).clean_train is None
    with pytest.raises(ValueError, match="label_noise"):
        few_shot_split(ds, 16, seed=4, label_noise=1.0)


def test_noisy_sample_is_cached_with_its_clean_labels(toy, tmp_path):
    cache = tmp_path / "cache"
    first = few_shot_split(toy, 8, seed=2, cache_dir=cache, label_noise=0.5)
    path = cache_path(cache, toy, 8, 2, label_noise=0.5)
    assert first.cache_path == path and path.name == "shot_8-seed_2-noise_0.5.json"
    raw = json.loads(path.read_text())
    assert raw["label_noise"] == 0.5 and len(raw["clean_train"]) == len(raw["train"])
    again = few_shot_split(toy, 8, seed=2, cache_dir=cache, label_noise=0.5)
    assert again.from_cache and again.train == first.train
    assert again.clean_train == first.clean_train and again.flipped == first.flipped > 0
    # the clean sample of the same (K, seed) is its own file, unchanged by the noise
    clean = few_shot_split(toy, 8, seed=2, cache_dir=cache)
    assert not clean.from_cache and clean.train == first.clean_train
    with pytest.raises(ValueError, match="subsample the clean split"):
        first.subsample([0, 1])
