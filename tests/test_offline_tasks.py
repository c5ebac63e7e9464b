"""Offline tasks: split allocation, emoji tasks on a synthetic corpus, image tasks from fake
packages, split files, reader round trips and the message for a task not prepared."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.data import DatasetError, load_dataset
from fewclip.offline import emoji_tasks, image_tasks, tasks
from fewclip.offline.corpus import CORPUS_DIR, is_heldout
from fewclip.offline.tasks import SplitRule, allocate

# ------------------------------------------------------------------------------ allocate


def test_allocate_sizes_minimums_and_caps():
    rng = random.Random(0)
    rule = SplitRule(train_frac=0.4, val_frac=0.1, min_train=16, min_val=4, min_test=10)
    train, val, test = allocate([[i] for i in range(30)], rule, rng)
    assert (len(train), len(val), len(test)) == (16, 4, 10)
    assert sorted(train + val + test) == list(range(30))
    assert allocate([[i] for i in range(29)], rule, rng) is None  # too few for 16 + 4 + 10
    train, val, test = allocate([[i] for i in range(200)], rule, rng)
    assert (len(train), len(val), len(test)) == (80, 20, 100)
    capped = SplitRule(0.4, 0.1, 16, 4, 10, max_test=60)
    assert len(allocate([[i] for i in range(200)], capped, rng)[2]) == 60


def test_allocate_keeps_groups_whole_and_is_seeded():
    groups = [[f"{k}a", f"{k}b"] for k in range(20)]
    rule = SplitRule(0.4, 0.1, min_train=16, min_val=4, min_test=10)
    parts = allocate(groups, rule, random.Random("1:t:c"))
    where = {item: i for i, part in enumerate(parts) for item in part}
    assert all(where[f"{k}a"] == where[f"{k}b"] for k in range(20))
    assert parts == allocate(groups, rule, random.Random("1:t:c"))
    assert parts != allocate(groups, rule, random.Random("2:t:c"))


# ------------------------------------------------------------------- synthetic emoji corpus


def emoji_ids(n_heldout: int, n_seen: int, start: int = 0x1F000) -> tuple[list[str], list[str]]:
    held, seen, k = [], [], start
    while len(held) < n_heldout or len(seen) < n_seen:
        i = f"{k:X}"
        if is_heldout(i) and len(held) < n_heldout:
            held.append(i)
        elif not is_heldout(i) and len(seen) < n_seen:
            seen.append(i)
        k += 1
    return held, seen


def write_corpus(root: Path) -> dict[str, dict]:
    """Subcategories: big (40 emoji), small (20), mid (31, noto for 25 only); category A
    holds big + small, B holds mid. Twelve emoji of big have 5 OpenMoji skin tones, one 25."""
    corpus = root / CORPUS_DIR
    held, seen = emoji_ids(8, 83)
    ids = held[:6] + seen[:34] + held[6:7] + seen[34:53] + held[7:] + seen[53:]
    plan = [("big", "Cat A")] * 40 + [("small", "Cat A")] * 20 + [("mid", "Cat B")] * 31
    records = {}
    tone_ids = held[:6] + seen[:6]
    for n, (i, (sub, cat)) in enumerate(zip(ids, plan, strict=True)):
        code = i.lower()
        images = {"openmoji": [f"images/openmoji/{code}.png"]}
        for style in ("twitter", "fluent-flat", "fluent-mono"):  # the other DG styles
            images[style] = [f"images/{style}/{code}.png"]
        if not (sub == "mid" and n >= 40 + 20 + 25):
            images["noto"] = [f"images/noto/{code}.png"]
        if i in tone_ids:
            tones = 25 if i == tone_ids[-1] else 5
            images["openmoji"] += [f"images/openmoji/{code}-t{t}.png" for t in range(tones)]
        records[i] = {
            "id": i,
            "name": f"emoji {code}",
            "short_names": [code],
            "category": cat,
            "subcategory": f"sub-{sub}",
            "heldout": is_heldout(i),
            "images": images,
        }
        for paths in images.values():
            for p in paths:
                (corpus / p).parent.mkdir(parents=True, exist_ok=True)
                (corpus / p).write_bytes(b"")
    with open(corpus / "emoji.jsonl", "w") as f:
        for r in records.values():
            f.write(json.dumps(r) + "\n")
    return records


def build(root: Path, seed: int = 1) -> dict[str, dict]:
    info = lambda task: {"seed": seed, "inputs": "test", "sources": []}
    return emoji_tasks.build_emoji_tasks(root, seed, info, log=lambda m: None)


@pytest.fixture
def emoji_root(tmp_path):
    records = write_corpus(tmp_path / "data")
    return tmp_path / "data", records, build(tmp_path / "data")


def splits_of(ds):
    return {"train": ds.train, "val": ds.val, "test": ds.test}


def per_class(items):
    return Counter(d.label for d in items)


def test_emoji_tasks_built_and_read_back(emoji_root):
    root, records, built = emoji_root
    assert set(built) == {t for t, s in tasks.TASKS.items() if s.group == "emoji"}
    for name, record in built.items():
        ds = load_dataset(name, root)
        assert ds.classnames == record["classnames"]
        assert {s: len(v) for s, v in splits_of(ds).items()} == record["counts"]
        assert ds.templates[0] == "an emoji of {}." and ds.negative_templates
        assert ds.root == root / CORPUS_DIR
        assert all(Path(d.impath).is_file() for d in ds.train + ds.val + ds.test)
        paths = [d.impath for d in ds.train + ds.val + ds.test]
        assert len(paths) == len(set(paths)), f"{name}: an image in two splits"
        raw = json.loads((root / name / f"split_fewclip_{name}.json").read_text())
        assert set(raw) == {"train", "val", "test"}
        for rel, label, classname in raw["test"]:
            assert rel.startswith("images/") and ds.classnames[label] == classname


def test_subcategory_and_category_tasks_keep_classes_with_enough_images(emoji_root):
    root, _, _ = emoji_root
    sub = load_dataset("emoji_openmoji_subcategory", root)
    assert sub.classnames == ["sub big", "sub mid"]  # small (20) < 16 + 4 + 10
    for split, low in (("train", 16), ("val", 4), ("test", 10)):
        assert min(per_class(getattr(sub, split)).values()) >= low
    assert max(per_class(sub.test).values()) <= 60
    assert load_dataset("emoji_noto_subcategory", root).classnames == ["sub big"]  # mid: 25
    cat = load_dataset("emoji_openmoji_category", root)
    assert cat.classnames == ["cat a", "cat b"]
    assert sum(per_class(cat.train + cat.val + cat.test).values()) == 91
    # both styles: small has 20 emoji x 2 pictures; an emoji's pictures share a split
    unseen = load_dataset("emoji_unseen_subcategory", root)
    assert "sub small" in unseen.classnames
    split_of = {}
    for split, items in splits_of(unseen).items():
        for d in items:
            split_of.setdefault(Path(d.impath).stem, set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())


def test_name_tasks_zero_shot_and_tones(emoji_root):
    root, records, _ = emoji_root
    zs = load_dataset("emoji_openmoji_name", root)
    assert zs.train == [] and zs.val == [] and len(zs.test) == zs.num_classes == 91
    assert sorted(zs.extra["new_labels"]) == [
        i for i, r in enumerate(zs.extra["ids"]) if records[r]["heldout"]
    ]
    assert len(zs.extra["new_labels"]) + len(zs.extra["base_labels"]) == 91
    tones = load_dataset("emoji_unseen_name", root)
    assert tones.num_classes == 12
    assert sorted(per_class(tones.val).values()) == [1] * 12
    assert sorted(per_class(tones.train).values()) == [4] * 11 + [24]
    for d in tones.test:  # default OpenMoji picture and the Noto picture
        assert "-t" not in Path(d.impath).name
    assert len(tones.test) == 24


def test_base_to_new_on_names_follows_the_heldout_rule(emoji_root):
    root, records, _ = emoji_root
    ds = load_dataset("emoji_name_b2n", root)
    n = ds.num_classes
    assert n == 12
    ids = ds.extra["ids"]
    assert ds.extra["base_labels"] == list(range(n // 2))
    assert ds.extra["new_labels"] == list(range(n // 2, n))
    assert not any(records[ids[i]]["heldout"] for i in ds.extra["base_labels"])
    assert all(records[ids[i]]["heldout"] for i in ds.extra["new_labels"])


def test_splits_are_seeded(tmp_path, emoji_root):
    root, _, _ = emoji_root
    first = load_dataset("emoji_openmoji_category", root).train
    build(root, seed=1)
    assert load_dataset("emoji_openmoji_category", root).train == first
    build(root, seed=2)
    assert load_dataset("emoji_openmoji_category", root).train != first


def test_fingerprint_does_not_depend_on_where_the_data_root_is(tmp_path, emoji_root, monkeypatch):
    root, _, _ = emoji_root
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    a = load_dataset("emoji_unseen_name", root)
    b = load_dataset("emoji_unseen_name", moved)
    assert a.fingerprint() == b.fingerprint()
    assert b.test[0].impath.startswith(str(moved))
    monkeypatch.chdir(tmp_path)
    c = load_dataset("emoji_unseen_name", "elsewhere")  # a relative data root
    assert Path(c.test[0].impath).is_absolute() and c.fingerprint() == a.fingerprint()


def test_task_not_prepared_names_the_prepare_command(tmp_path):
    for name, group in (("fashion_mnist", "fashion_mnist"), ("emoji_noto_name", "emoji")):
        with pytest.raises(DatasetError) as e:
            load_dataset(name, tmp_path)
        assert f"python -m fewclip.offline prepare --data-root {tmp_path} --only {group}" in str(
            e.value
        )


def test_reader_rejects_a_split_file_that_disagrees_with_task_json(emoji_root):
    root, _, _ = emoji_root
    path = root / "emoji_unseen_name" / "split_fewclip_emoji_unseen_name.json"
    raw = json.loads(path.read_text())
    raw["test"][0][2] = "something else"
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="does not match"):
        load_dataset("emoji_unseen_name", root)


# ---------------------------------------------------------------- image tasks, fake packages


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_counts(monkeypatch):
    monkeypatch.setitem(image_tasks.PER_CLASS, "train", 3)
    monkeypatch.setitem(image_tasks.PER_CLASS, "val", 1)
    monkeypatch.setitem(image_tasks.PER_CLASS, "test", 2)


def fake_fashion_deb(path: Path) -> Path:
    from test_offline_sources import make_deb

    rng = np.random.default_rng(0)
    files = {}
    for part, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 255, (n, 28, 28))
        images[:, 0, 0] = labels  # the label is readable from the picture
        files[f"usr/share/datasets/fashion-mnist/{part}-images-idx3-ubyte.gz"] = idx_bytes(images)
        files[f"usr/share/datasets/fashion-mnist/{part}-labels-idx1-ubyte.gz"] = idx_bytes(labels)
    return make_deb(path, files)


def test_fashion_mnist_from_a_fake_deb(tmp_path, small_counts):
    archive = fake_fashion_deb(tmp_path / "f.deb")
    info = {"seed": 1, "inputs": "x", "sources": []}
    record = image_tasks.build_fashion_mnist(tmp_path / "data", archive, 1, info)
    assert record["counts"] == {"train": 30, "val": 10, "test": 20}
    ds = load_dataset("fashion_mnist", tmp_path / "data")
    assert ds.classnames[0] == "t-shirt or top" and ds.classnames[9] == "ankle boot"
    assert ds.templates[0] == "a photo of a {}."
    for d in ds.train + ds.val + ds.test:
        with Image.open(d.impath) as im:
            assert im.size == (28, 28) and im.getpixel((0, 0)) == d.label
    assert all("t10k" in Path(d.impath).name for d in ds.test)
    assert not {d.impath for d in ds.train} & {d.impath for d in ds.val}


def numpy_pickle(array: np.ndarray) -> bytes:
    return gzip.compress(pickle.dumps(array, protocol=4))


def test_animal_mnist_from_a_fake_wheel(tmp_path, small_counts):
    labels = np.repeat(np.arange(10), 6)
    images = np.zeros((60, 28, 28), np.uint8)
    images[:, 0, 0] = labels * 10
    archive = tmp_path / "a.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("animal_mnist/data/Animal_MNIST/animal_data_version_3.gz", numpy_pickle(images))
        z.writestr("animal_mnist/data/Animal_MNIST/animal_label_version_3.gz", numpy_pickle(labels))
    info = {"seed": 1, "inputs": "x", "sources": []}
    image_tasks.build_animal_mnist(tmp_path / "data", archive, 1, info)
    ds = load_dataset("animal_mnist", tmp_path / "data")
    assert ds.classnames == list(image_tasks.ANIMAL_CLASSES)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 20)
    for d in ds.test:
        with Image.open(d.impath) as im:
            assert im.getpixel((0, 0)) == d.label * 10


def test_pickles_other_than_numpy_arrays_are_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        image_tasks.read_numpy_pickle(pickle.dumps(Evil()))


def stamp_png(colour) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGBA", (40, 20), (*colour, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_tuxpaint_photo_classes_from_a_fake_deb(tmp_path):
    from test_offline_sources import make_deb

    stamps = "usr/share/tuxpaint/stamps/"
    files = {}
    layout = {
        "animals/birds": 5,
        "animals/mammals": 2,
        "animals/mammals/cats": 2,
        "animals/marsupials": 1,
        "animals/fish": 3,
        "food/fruit": 3,
        "food/vegetables": 3,
        "plants/flowers": 3,
        "symbols/money/euro/coins": 2,
        "symbols/money/japanese": 1,
        "hobbies/music/string": 3,
    }
    for folder, n in layout.items():
        for k in range(n):
            files[f"{stamps}{folder}/s{k}.png"] = stamp_png((10 * k, 100, 200))
    files[stamps + "animals/fish/lobster.png"] = stamp_png((255, 0, 0))  # not a fish
    files[stamps + "animals/mammals/bears/toys/edward_bear.png"] = stamp_png((1, 1, 1))
    files[stamps + "food/fruit/cartoon/apple.png"] = stamp_png((2, 2, 2))  # a drawing
    files[stamps + "symbols/money/00_symbols/euro.png"] = stamp_png((3, 3, 3))  # a drawing
    files[stamps + "animals/birds/s0.txt"] = b"A bird."
    archive = make_deb(tmp_path / "t.deb", files)
    info = {"seed": 1, "inputs": "x", "sources": []}
    record = image_tasks.build_tuxpaint(tmp_path / "data", archive, 1, info)
    assert record["num_classes"] == 8
    ds = load_dataset("tuxpaint_photos", tmp_path / "data")
    totals = per_class(ds.train + ds.val + ds.test)
    named = {ds.classnames[k]: v for k, v in totals.items()}
    assert named == {
        "bird": 5,
        "mammal": 5,
        "fish": 3,
        "fruit": 3,
        "vegetable": 3,
        "flower": 3,
        "coin": 3,
        "musical instrument": 3,
    }
    assert min(per_class(ds.train).values()) >= 1 and min(per_class(ds.test).values()) >= 1
    with Image.open(ds.test[0].impath) as im:
        assert im.mode == "RGB" and im.size == (128, 128)
        assert im.getpixel((0, 0)) == (255, 255, 255)  # padding and transparency -> white


def test_domain_generalisation_family_shares_classes_and_splits(emoji_root):
    root, records, built = emoji_root
    family = [t for t in built if t.startswith("emoji_dg_")]
    assert sorted(family) == sorted(built["emoji_dg_twitter"]["extra"]["dg_family"])
    sets = {t: load_dataset(t, root) for t in family}
    names = sets["emoji_dg_twitter"].classnames
    assert names == ["sub big", "sub mid"]  # small (20 emoji) cannot give 16 + 4 + 10
    assert all(ds.classnames == names for ds in sets.values())
    noto = sets["emoji_dg_noto"]
    assert not noto.train and not noto.val and noto.test  # test-only target
    for t, ds in sets.items():
        if t == "emoji_dg_noto":
            continue
        assert min(per_class(ds.train).values()) >= 16 and min(per_class(ds.val).values()) >= 4
        assert all(f"/{ds.extra['style']}/" in d.impath for d in ds.train + ds.val + ds.test)

    # one emoji, one split, in every style that draws it
    def split_of(ds):
        return {Path(d.impath).stem: s for s, items in splits_of(ds).items() for d in items}

    twitter, flat = split_of(sets["emoji_dg_twitter"]), split_of(sets["emoji_dg_fluent_flat"])
    assert twitter == flat
    # the test-only style holds every picture of the classes (capped at 60 per class)
    drawn = {
        r["id"].lower()
        for r in records.values()
        if r["images"].get("noto") and r["subcategory"] in ("sub-big", "sub-mid")
    }
    assert set(split_of(noto)) == drawn


def test_subcategory_b2n_has_base_and_new_halves_with_val(emoji_root):
    root, records, built = emoji_root
    ds = load_dataset("emoji_subcategory_b2n", root)
    n = len(ds.classnames)
    assert ds.extra["base_labels"] == list(range((n + 1) // 2))
    assert ds.extra["new_labels"] == list(range((n + 1) // 2, n))
    assert min(per_class(ds.val).values()) >= 4 and min(per_class(ds.train).values()) >= 16
    assert set(ds.extra["styles"]) == {"openmoji", "noto", "fluent-flat", "fluent-mono"}
    # an emoji's pictures in the four styles never straddle splits
    where = {}
    for split, items in splits_of(ds).items():
        for d in items:
            where.setdefault(Path(d.impath).stem, set()).add(split)
    assert all(len(s) == 1 for s in where.values())
