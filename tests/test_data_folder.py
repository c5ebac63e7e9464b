"""Image folders (bring your own data), split generation helpers, templates and descriptions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fewclip.data import DatasetError, load_dataset, load_descriptions, templates_for
from fewclip.data.splits import list_dir, read_or_create_split, split_folder, split_trainval
from fewclip.data.templates import (
    IMAGENET_NEGATIVE_TEMPLATES,
    NEGATIVE_TEMPLATES,
    OUR_IMAGENET_NEGATIVES,
    TEMPLATES,
)


def tree(folder: Path, classes: dict[str, int], ext: str = ".png") -> Path:
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / c / f"{i:03d}{ext}")
    return folder


# --- image folder ---------------------------------------------------------------------------------


def test_image_folder_generates_and_reuses_split(tmp_path):
    images = tree(tmp_path / "my_pets", {"golden_retriever": 10, "tabby_cat": 10})
    (images / "tabby_cat" / "notes.txt").write_text("not an image")
    (images / "tabby_cat" / ".hidden.png").write_bytes(b"")
    ds = load_dataset("folder:my_pets", tmp_path)
    assert ds.classnames == ["golden retriever", "tabby cat"]
    assert ds.templates == ["a photo of a {}."]
    assert ds.negative_templates == ["a photo without {}."]
    assert [len(ds.split(p)) for p in ("train", "val", "test")] == [10, 4, 6]
    assert all(d.impath.endswith(".png") for d in ds.train + ds.val + ds.test)
    split_file = images / "split_fewclip.json"
    raw = json.loads(split_file.read_text())
    assert raw["train"][0][0].split("/")[0] in ("golden_retriever", "tabby_cat")
    same = load_dataset("image_folder", images)  # the registered reader, data root = folder
    assert same.fingerprint() == ds.fingerprint()
    absolute = load_dataset(f"folder:{images}", "unused-root")
    assert absolute.fingerprint() == ds.fingerprint()


def test_image_folder_options(tmp_path):
    images = tree(tmp_path / "imgs", {"a": 5, "b": 5})
    ds = load_dataset(
        "folder:imgs",
        tmp_path,
        templates="a sketch of a {}.",
        negative_templates=["a sketch without {}.", "no {} here."],
        split_file=tmp_path / "splits" / "mine.json",
        dataset_name="sketches",
        p_train=0.6,
        p_val=0.2,
    )
    assert ds.name == "sketches"
    assert ds.templates == ["a sketch of a {}."]
    assert ds.negative_templates == ["a sketch without {}.", "no {} here."]
    assert (tmp_path / "splits" / "mine.json").is_file()
    assert not (images / "split_fewclip.json").exists()
    assert Counter(d.label for d in ds.train) == {0: 3, 1: 3}
    with pytest.raises(DatasetError, match=r"must contain '\{\}'"):
        load_dataset("folder:imgs", tmp_path, templates="a photo of a cat.")


def test_image_folder_stale_split(tmp_path):
    images = tree(tmp_path / "imgs", {"a": 5, "b": 5})
    load_dataset("folder:imgs", tmp_path)
    tree(images, {"c": 5})
    with pytest.raises(DatasetError, match="delete the split file"):
        load_dataset("folder:imgs", tmp_path)
    (images / "split_fewclip.json").unlink()
    assert load_dataset("folder:imgs", tmp_path).num_classes == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected a folder at .*nowhere"):
        load_dataset("folder:nowhere", tmp_path)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset("folder:flat", tmp_path)


# --- split generation ---------------------------------------------------------------------------


def test_split_folder_format_proportions_determinism(tmp_path):
    images = tree(tmp_path / "imgs", {"b": 10, "a": 20, "c": 7})
    splits = split_folder(images, seed=5)
    sizes = {p: Counter(d.classname for d in splits[p]) for p in splits}
    assert sizes["train"] == {"a": 10, "b": 5, "c": 4}  # round(3.5) == 4
    assert sizes["val"] == {"a": 4, "b": 2, "c": 1}  # round(1.4) == 1
    assert sizes["test"] == {"a": 6, "b": 3, "c": 2}
    assert {d.classname: d.label for d in splits["test"]} == {"a": 0, "b": 1, "c": 2}
    every = [d.impath for p in splits for d in splits[p]]
    assert len(every) == len(set(every)) == 37  # a partition of all images
    assert split_folder(images, seed=5) == splits
    assert split_folder(images, seed=6) != splits


def test_split_trainval_rounding_and_error(tmp_path):
    from fewclip.data import Datum

    items = [Datum(f"/x/{c}{i}.jpg", c, f"k{c}") for c in (1, 0) for i in range(12)]
    train, val = split_trainval(items, seed=1)
    assert Counter(d.label for d in val) == {0: 2, 1: 2}  # round(2.4) == 2
    assert sorted(train + val, key=str) == sorted(items, key=str)
    assert val[0].label == 1  # classes in order of first appearance
    with pytest.raises(DatasetError, match="'k0' has 2"):
        split_trainval([Datum("/x/a", 0, "k0"), Datum("/x/b", 0, "k0")])


def test_read_or_create_split_warns_when_it_cannot_save(tmp_path, monkeypatch):
    import fewclip.data.splits as splits_mod

    images = tree(tmp_path / "imgs", {"a": 5, "b": 5})

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(splits_mod, "write_split", refuse)
    with pytest.warns(UserWarning, match="could not save"):
        splits = read_or_create_split(tmp_path / "s.json", images, lambda: split_folder(images))
    assert len(splits["train"]) == 4


def test_list_dir(tmp_path):
    tree(tmp_path, {"b": 1, "a": 1})
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.txt").write_text("x")
    assert list_dir(tmp_path) == ["README.txt", "a", "b"]
    assert list_dir(tmp_path, dirs=True) == ["a", "b"]
    assert list_dir(tmp_path, dirs=False) == ["README.txt"]
    with pytest.raises(DatasetError, match="expected a folder"):
        list_dir(tmp_path / "missing")


# --- templates and descriptions -----------------------------------------------------------------


def test_template_tables_cover_every_benchmark():
    from fewclip.data import list_datasets

    benchmarks = set(list_datasets()) & set(TEMPLATES)
    assert len(benchmarks) == 15
    assert set(TEMPLATES) == set(NEGATIVE_TEMPLATES)
    for name in TEMPLATES:
        assert all(t.count("{}") == 1 for t in TEMPLATES[name] + NEGATIVE_TEMPLATES[name])
    assert len(IMAGENET_NEGATIVE_TEMPLATES) == 14
    assert len(set(IMAGENET_NEGATIVE_TEMPLATES)) == 14
    assert IMAGENET_NEGATIVE_TEMPLATES[-6:] == OUR_IMAGENET_NEGATIVES
    assert templates_for("imagenet", "single") == ["a photo of a {}."]
    assert templates_for("dtd", "apex") == ["a photo of a {} texture."]
    assert templates_for("oxford_pets", "apex") == ["a photo of a {}, a type of pet."]
    assert templates_for("folder:x") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="template style"):
        templates_for("dtd", "fancy")


def test_load_descriptions(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(
        json.dumps(
            {
                "Apply_Eye_Makeup": ["A person applying eye makeup.", "Mascara."],
                "yo yo": ["A spinning yo-yo."],
                "Extra Class": ["ignored"],
            }
        )
    )
    out = load_descriptions(path, ["Apply Eye Makeup", "Yo Yo"])
    assert list(out) == ["Apply Eye Makeup", "Yo Yo"]
    assert out["Apply Eye Makeup"] == ["A person applying eye makeup.", "Mascara."]
    assert out["Yo Yo"] == ["A spinning yo-yo."]
    with pytest.raises(DatasetError, match=r"2 of 3 classes: 'Juggling', 'Surfing'"):
        load_descriptions(path, ["Yo Yo", "Juggling", "Surfing"])
    path.write_text(json.dumps({"a": []}))
    with pytest.raises(DatasetError, match="'a'"):
        load_descriptions(path, ["a"])
    path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="must map class names"):
        load_descriptions(path, ["a"])
    with pytest.raises(DatasetError, match="not found"):
        load_descriptions(tmp_path / "none.json", ["a"])
