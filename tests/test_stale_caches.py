"""Caches that must notice changed files: image features and run keys follow the files'
identity (size + mtime), the few-shot sample file its checksum, ``train_images`` counts the
images actually used, and temporary files of interrupted writes are cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fewclip.config import RunConfig
from fewclip.data import load_dataset
from fewclip.features import FeatureCache, image_features
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore
from fewclip.runner import run, sample_split


def damage(path) -> None:
    st = os.stat(path)
    path.write_bytes(b"not an image any more")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def repair(path, good: bytes) -> None:
    path.write_bytes(good)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))


def test_a_repaired_image_is_encoded_again(test_rn, image_items, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    target = image_items[0]
    good = open(target.impath, "rb").read()
    damage(type(tmp_path)(target.impath))
    with pytest.warns(UserWarning, match="unreadable"):
        before = image_features(test_rn, image_items, cache, progress=False)
    assert not before.valid[0] and before.valid[1:].all()
    repair(type(tmp_path)(target.impath), good)
    after = image_features(test_rn, image_items, cache, progress=False)
    assert after.valid.all()  # not the cached "unreadable"


@pytest.fixture
def root(tmp_path):
    coloured_squares(tmp_path / "data" / "squares", num_classes=3, per_class=12, seed=0)
    return tmp_path


def cfg(root, **kw) -> RunConfig:
    base = dict(
        method="zero_shot",
        shots=0,
        dataset="folder:squares",
        backbone="fewclip-test-rn",
        pretrained=None,
        augment_views=1,
        data_root=str(root / "data"),
        cache_dir=str(root / "cache"),
        progress=False,
    )
    return RunConfig(**{**base, **kw})


def test_a_damaged_image_is_a_new_run_not_the_stored_clean_record(root):
    store = ResultStore(root / "r.sqlite")
    clean = run(cfg(root), store=store)
    assert clean["unreadable_images"] == 0
    dataset = load_dataset("folder:squares", str(root / "data"))
    damage(type(root)(dataset.test[0].impath))
    with pytest.warns(UserWarning, match="unreadable"):
        damaged = run(cfg(root), store=store)
    assert not damaged["skipped"] and damaged["unreadable_images"] == 1
    assert damaged["run_key"] != clean["run_key"] and len(store) == 2


def used_with_one_shot_damaged(root, config: RunConfig) -> tuple[int, int]:
    """(train_images of the run, the sample's size) after damaging its first shot."""
    dataset = load_dataset("folder:squares", str(root / "data"))
    split = sample_split(dataset, config)
    damage(type(root)(split.train[0].impath))
    with pytest.warns(UserWarning, match="unreadable"):
        record = run(config)
    return record["metrics"]["train_images"], len(split.train)


def test_train_images_counts_the_images_actually_used(root):
    used, sampled = used_with_one_shot_damaged(root, cfg(root, method="tip_adapter", shots=2))
    assert used == sampled - 1
    assert run(cfg(root))["metrics"]["train_images"] == 0  # zero-shot uses none


@pytest.mark.parametrize("cached", [True, False])
def test_encoder_methods_count_the_training_images_they_used(root, cached):
    """CoOp trained on cached views or re-encoding images on-line: a damaged shot is not
    counted as used."""
    options = {"epochs": 2, "n_ctx": 2, "views": 1, "cache_images": cached}
    config = cfg(root, method="coop", shots=2, backbone="fewclip-test-vit", options=options)
    used, sampled = used_with_one_shot_damaged(root, config)
    assert used == sampled - 1


def test_stale_temporary_files_are_removed(tmp_path):
    folder = tmp_path / "cache" / "image" / "bb"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 120
    of_dead = folder / f"abc.pt.{dead.pid}.tmp"
    of_live_fresh = folder / f"def.pt.{os.getpid()}.tmp"
    ancient = folder / ".shot_1-seed_1.json.x1y2.tmp"
    for p in (of_dead, of_live_fresh, ancient):
        p.write_bytes(b"partial")
    os.utime(of_dead, (old, old))
    os.utime(ancient, (time.time() - 7200, time.time() - 7200))
    entry = folder / "ghi.pt"
    entry.write_bytes(b"an entry")
    FeatureCache(tmp_path / "cache")
    assert not of_dead.exists() and not ancient.exists()
    assert of_live_fresh.exists() and entry.exists()  # a writer may still be at work
