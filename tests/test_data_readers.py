"""Readers of the 15 CoOp benchmarks on tiny synthetic trees in each dataset's real layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.data import DatasetError, load_dataset


def touch_image(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 64, 128)).save(path)
    return path


def class_folders(image_dir: Path, classes: dict[str, int], ext: str = ".jpg") -> None:
    for c, n in classes.items():
        for i in range(n):
            touch_image(image_dir / c / f"{c}_{i:04d}{ext}", i)


def rel_rows(items, base: Path) -> list[tuple[str, int, str]]:
    return [(str(Path(d.impath).relative_to(base)), d.label, d.classname) for d in items]


def coop_read_and_split(image_dir: Path, seed: int, ignored=(), new_cnames=None):
    """Independent re-statement of CoOp's read_and_split_data (global RNG, sorted files)."""
    random.seed(seed)
    cats = sorted(c.name for c in image_dir.iterdir() if c.is_dir() and c.name not in ignored)
    out = {"train": [], "val": [], "test": []}
    for label, cat in enumerate(cats):
        ims = sorted(str(p) for p in (image_dir / cat).iterdir())
        random.shuffle(ims)
        n_tr, n_va = round(len(ims) * 0.5), round(len(ims) * 0.2)
        name = (new_cnames or {}).get(cat, cat)
        out["train"] += [(p, label, name) for p in ims[:n_tr]]
        out["val"] += [(p, label, name) for p in ims[n_tr : n_tr + n_va]]
        out["test"] += [(p, label, name) for p in ims[n_tr + n_va :]]
    return out


def as_tuples(ds) -> dict[str, list[tuple[str, int, str]]]:
    return {
        p: [(d.impath, d.label, d.classname) for d in ds.split(p)] for p in ("train", "val", "test")
    }


# --- class-folder datasets: split generated when absent ---------------------------------------


def test_caltech101_generates_coop_split(tmp_path):
    image_dir = tmp_path / "caltech-101" / "101_ObjectCategories"
    class_folders(
        image_dir,
        {"BACKGROUND_Google": 5, "Faces_easy": 5, "Faces": 5, "airplanes": 7, "ant": 5},
    )
    ds = load_dataset("caltech101", tmp_path)
    # background and Faces_easy ignored; sorted case-sensitively; CoOp's renames
    assert ds.classnames == ["face", "airplane", "ant"]
    assert ds.templates == ["a photo of a {}."]
    assert ds.negative_templates == ["a photo without {}."]
    # Python rounding: 5 images -> 2/1/2 (round(2.5) == 2), 7 -> 4/1/2
    counts = {p: np.bincount([d.label for d in ds.split(p)]).tolist() for p in ("train", "val")}
    assert counts == {"train": [2, 4, 2], "val": [1, 1, 1]}
    assert len(ds.test) == 2 + 2 + 2
    expected = coop_read_and_split(
        image_dir,
        1,
        ignored=("BACKGROUND_Google", "Faces_easy"),
        new_cnames={"Faces": "face", "airplanes": "airplane"},
    )
    assert as_tuples(ds) == expected
    # saved in CoOp's format next to the data, relative to the image folder
    split_file = tmp_path / "caltech-101" / "split_zhou_Caltech101.json"
    raw = json.loads(split_file.read_text())
    assert sorted(raw) == ["test", "train", "val"]
    assert raw["train"][0][0].startswith(("Faces/", "airplanes/", "ant/"))
    assert [tuple(r) for r in raw["val"]] == rel_rows(ds.val, image_dir)


def test_generated_split_is_reused_and_seeded(tmp_path):
    image_dir = tmp_path / "food-101" / "images"
    class_folders(image_dir, {"apple_pie": 10, "baklava": 10})
    first = load_dataset("food101", tmp_path)
    assert first.classnames == ["apple pie", "baklava"]  # "_" -> space in prompts
    assert first.train[0].classname in ("apple_pie", "baklava")  # raw name kept in items
    split_file = tmp_path / "food-101" / "split_zhou_Food101.json"
    stamp = split_file.stat().st_mtime_ns
    again = load_dataset("food101", tmp_path)
    assert as_tuples(again) == as_tuples(first)
    assert split_file.stat().st_mtime_ns == stamp  # read, not regenerated
    split_file.unlink()
    other = load_dataset("food101", tmp_path, split_seed=2)
    assert other.fingerprint() != first.fingerprint()
    assert sorted(d.impath for d in other.train + other.val + other.test) == sorted(
        d.impath for d in first.train + first.val + first.test
    )


def test_dtd_reads_given_split_file_as_is(tmp_path):
    root = tmp_path / "dtd"
    class_folders(root / "images", {"banded": 3, "zigzagged": 3})
    rows = {
        "train": [
            ["zigzagged/zigzagged_0000.jpg", 1, "zigzagged"],
            ["banded/banded_0002.jpg", 0, "banded"],
        ],
        "val": [["banded/banded_0000.jpg", 0, "banded"]],
        "test": [
            ["banded/banded_0001.jpg", 0, "banded"],
            ["zigzagged/zigzagged_0001.jpg", 1, "zigzagged"],
        ],
    }
    (root / "split_zhou_DescribableTextures.json").write_text(json.dumps(rows))
    ds = load_dataset("dtd", tmp_path)
    assert ds.classnames == ["banded", "zigzagged"]
    assert ds.templates == ["{} texture."]
    assert ds.negative_templates == ["not {} texture."]
    for part in ("train", "val", "test"):
        assert [list(r) for r in rel_rows(ds.split(part), root / "images")] == rows[part]
    assert ds.root == root


def test_eurosat_readable_names(tmp_path):
    image_dir = tmp_path / "eurosat" / "2750"
    class_folders(image_dir, {"AnnualCrop": 5, "SeaLake": 5, "Highway": 5})
    ds = load_dataset("eurosat", tmp_path)
    assert ds.classnames == ["Annual Crop Land", "Highway or Road", "Sea or Lake"]
    assert ds.templates == ["a centered satellite photo of {}."]
    assert ds.negative_templates == ["a centered satellite photo without {}."]
    # a split file with raw folder names still gives readable names
    rows = {"train": [["AnnualCrop/AnnualCrop_0000.jpg", 0, "AnnualCrop"]], "val": [], "test": []}
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(rows))
    assert load_dataset("eurosat", tmp_path).classnames == ["Annual Crop Land"]


# --- datasets with their own annotation files ---------------------------------------------------


def test_oxford_pets_from_annotations(tmp_path):
    root = tmp_path / "oxford_pets"
    lines = {"trainval.txt": [], "test.txt": []}
    for breed, label, species in (("Abyssinian", 1, 1), ("american_bulldog", 2, 2)):
        for i in range(1, 9):
            imname = f"{breed}_{i}"
            touch_image(root / "images" / f"{imname}.jpg", i)
            part = "trainval.txt" if i <= 5 else "test.txt"
            lines[part].append(f"{imname} {label} {species} {i}")
    (root / "annotations").mkdir()
    for name, ls in lines.items():
        (root / "annotations" / name).write_text("\n".join(ls) + "\n")
    ds = load_dataset("oxford_pets", tmp_path)
    assert ds.classnames == ["abyssinian", "american bulldog"]
    assert ds.train[0].classname in ("abyssinian", "american_bulldog")
    assert ds.templates == ["a photo of a {}, a type of pet."]
    # 5 trainval per class: round(5 * 0.2) = 1 to val
    assert len(ds.val) == 2 and len(ds.train) == 8 and len(ds.test) == 6
    assert {Path(d.impath).name for d in ds.test if d.label == 0} == {
        f"Abyssinian_{i}.jpg" for i in (6, 7, 8)
    }
    # CoOp's split_trainval on the global RNG seeded with 1
    random.seed(1)
    expected_val = []
    for _ in (0, 1):
        idxs = list(range(5))
        random.shuffle(idxs)
        expected_val.append(idxs[0])
    breeds = ("Abyssinian", "american_bulldog")
    assert [Path(d.impath).name for d in ds.val] == [
        f"{breeds[k]}_{i + 1}.jpg" for k, i in enumerate(expected_val)
    ]
    assert (root / "split_zhou_OxfordPets.json").is_file()


def test_stanford_cars_from_mat_files(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"

    def annos(path, n, offset):
        arr = np.zeros((1, n), dtype=[("fname", "O"), ("class", "O")])
        for i in range(n):
            arr[0, i] = (f"{offset + i:05d}.jpg", np.array([[i % 2 + 1]], dtype=np.uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        savemat(path, {"annotations": arr})

    annos(root / "devkit" / "cars_train_annos.mat", 10, 1)
    annos(root / "cars_test_annos_withlabels.mat", 4, 1)
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Audi S4 Sedan 2012"
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    for i in range(1, 11):
        touch_image(root / "cars_train" / f"{i:05d}.jpg")
    for i in range(1, 5):
        touch_image(root / "cars_test" / f"{i:05d}.jpg")
    ds = load_dataset("stanford_cars", tmp_path)
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Audi S4 Sedan"]
    assert len(ds.train) == 8 and len(ds.val) == 2 and len(ds.test) == 4
    raw = json.loads((root / "split_zhou_StanfordCars.json").read_text())
    # paths relative to the dataset folder, not to an image folder
    assert raw["test"][0] == ["cars_test/00001.jpg", 0, "2000 AM General Hummer SUV"]
    assert {r[0].split("/")[0] for r in raw["train"] + raw["val"]} == {"cars_train"}
    assert load_dataset("stanford_cars", tmp_path).fingerprint() == ds.fingerprint()


def test_oxford_flowers_from_mat_and_names(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "oxford_flowers"
    labels = [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]  # label 2 appears first
    for i in range(len(labels)):
        touch_image(root / "jpg" / f"image_{i + 1:05d}.jpg", i)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    (root / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "globe thistle"}))
    ds = load_dataset("oxford_flowers", tmp_path)
    assert ds.classnames == ["pink primrose", "globe thistle"]
    assert ds.templates == ["a photo of a {}, a type of flower."]
    assert [len(ds.split(p)) for p in ("train", "val", "test")] == [4, 2, 4]
    # per label in order of first appearance (2 then 1), one RNG stream
    rng = random.Random(1)
    first = [f"image_{i + 1:05d}.jpg" for i, y in enumerate(labels) if y == 2]
    rng.shuffle(first)
    assert [Path(d.impath).name for d in ds.train[:2]] == first[:2]
    assert {d.label for d in ds.train[:2]} == {1}


def test_fgvc_aircraft_official_txt_splits(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    (root).mkdir()
    (root / "variants.txt").write_text("707-320\nCessna 172\nA300B4\n")
    lists = {
        "train": ["1000001 707-320", "1000002 Cessna 172"],
        "val": ["1000003 A300B4"],
        "test": ["1000004 Cessna 172", "1000005 707-320"],
    }
    for part, ls in lists.items():
        (root / f"images_variant_{part}.txt").write_text("\n".join(ls) + "\n")
        for line in ls:
            touch_image(root / "images" / f"{line.split()[0]}.jpg")
    ds = load_dataset("fgvc_aircraft", tmp_path)
    assert ds.classnames == ["707-320", "Cessna 172", "A300B4"]
    assert [(Path(d.impath).name, d.label) for d in ds.train] == [
        ("1000001.jpg", 0),
        ("1000002.jpg", 1),
    ]
    assert [d.label for d in ds.val] == [2] and [d.label for d in ds.test] == [1, 0]
    assert ds.negative_templates == ["a photo without {}, a type of aircraft."]
    assert not list(root.glob("split_*.json"))  # official splits: nothing generated
    (root / "variants.txt").unlink()
    with pytest.raises(DatasetError, match="variants.txt"):
        load_dataset("fgvc_aircraft", tmp_path)


def test_sun397_from_partitions(tmp_path):
    root = tmp_path / "sun397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor"]
    root.mkdir()
    (root / "ClassName.txt").write_text("\n".join(classes) + "\n")
    train_lines, test_lines = [], []
    for c in classes:
        for i in range(7):
            touch_image(root / "SUN397" / c[1:] / f"sun_{i}.jpg")
            (train_lines if i < 5 else test_lines).append(f"{c}/sun_{i}.jpg")
    (root / "Training_01.txt").write_text("\n".join(train_lines) + "\n")
    (root / "Testing_01.txt").write_text("\n".join(test_lines) + "\n")
    ds = load_dataset("sun397", tmp_path)
    assert ds.classnames == ["abbey", "outdoor apartment building"]
    assert ds.train[0].classname in ("abbey", "outdoor apartment_building")
    assert [len(ds.split(p)) for p in ("train", "val", "test")] == [8, 2, 4]
    raw = json.loads((root / "split_zhou_SUN397.json").read_text())
    assert raw["test"][0] == ["a/abbey/sun_5.jpg", 0, "abbey"]


def test_ucf101_from_lists(tmp_path):
    root = tmp_path / "ucf101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    train, test = [], []
    for action, label in (("ApplyEyeMakeup", 1), ("YoYo", 2)):
        renamed = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "YoYo": "Yo_Yo"}[action]
        for g in range(1, 8):
            touch_image(root / "UCF-101-midframes" / renamed / f"v_{action}_g{g:02d}_c01.jpg")
            if g <= 5:
                train.append(f"{action}/v_{action}_g{g:02d}_c01.avi {label}")
            else:
                test.append(f"{action}/v_{action}_g{g:02d}_c01.avi")
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    ds = load_dataset("ucf101", tmp_path)
    assert ds.classnames == ["Apply Eye Makeup", "Yo Yo"]
    assert ds.templates == ["a photo of a person doing {}."]
    assert ds.negative_templates == ["a photo of a person not doing {}."]
    assert [len(ds.split(p)) for p in ("train", "val", "test")] == [8, 2, 4]
    assert ds.test[0].impath.endswith("Apply_Eye_Makeup/v_ApplyEyeMakeup_g06_c01.jpg")


# --- ImageNet and variants -----------------------------------------------------------------------

WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def imagenet_tree(tmp_path: Path, per_class: int = 4, val_per_class: int = 2) -> Path:
    root = tmp_path / "imagenet"
    root.mkdir()
    (root / "classnames.txt").write_text("\n".join(f"{w} {n}" for w, n in WNIDS.items()) + "\n")
    for w in WNIDS:
        for i in range(per_class):
            touch_image(root / "images" / "train" / w / f"{w}_{i}.JPEG", i)
        for i in range(val_per_class):
            touch_image(root / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG", i)
    return root


def test_imagenet_leak_free_val_by_default(tmp_path):
    root = imagenet_tree(tmp_path)
    ds = load_dataset("imagenet", tmp_path, val_per_class=1)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert ds.templates[0] == "itap of a {}." and len(ds.templates) == 7
    assert len(ds.negative_templates) == 14
    assert len(ds.test) == 6 and all("/images/val/" in d.impath for d in ds.test)
    assert np.bincount([d.label for d in ds.val]).tolist() == [1, 1, 1]
    assert np.bincount([d.label for d in ds.train]).tolist() == [3, 3, 3]
    all_train = {str(p) for p in (root / "images" / "train").rglob("*.JPEG")}
    assert {d.impath for d in ds.train} | {d.impath for d in ds.val} == all_train
    assert not {d.impath for d in ds.train} & {d.impath for d in ds.val}
    assert ds.extra["val_is_test"] is False
    assert ds.extra["imagenet_indices"] == [0, 1, 2]
    # seeded: same hold-out again, another with another seed
    assert load_dataset("imagenet", tmp_path, val_per_class=1).val == ds.val
    vals = {
        tuple(load_dataset("imagenet", tmp_path, val_per_class=1, val_seed=s).val) for s in range(6)
    }
    assert len(vals) > 1


def test_imagenet_val_is_test_reproduces_official_protocol(tmp_path):
    imagenet_tree(tmp_path)
    ds = load_dataset("imagenet", tmp_path, val_is_test=True)
    assert ds.val == ds.test and len(ds.train) == 12
    assert ds.extra["val_is_test"] is True
    assert "not leak-free" in ds.description


def test_imagenet_listing_is_cached(tmp_path):
    root = imagenet_tree(tmp_path)
    first = load_dataset("imagenet", tmp_path, val_is_test=True)
    listing = root / "listing_fewclip.json"
    assert listing.is_file()
    raw = json.loads(listing.read_text())
    assert raw["wnids"] == sorted(WNIDS) and raw["train"][0][0].startswith("train/n01440764/")
    # a new image is not seen while the cached listing is used ...
    touch_image(root / "images" / "train" / "n01440764" / "zzz_new.JPEG")
    assert load_dataset("imagenet", tmp_path, val_is_test=True).train == first.train
    # ... refresh=True lists again; a changed class set invalidates the cache by itself
    assert len(load_dataset("imagenet", tmp_path, val_is_test=True, refresh=True).train) == 13
    elsewhere = tmp_path / "cache" / "listing.json"
    load_dataset("imagenet", tmp_path, val_is_test=True, listing_file=elsewhere)
    assert elsewhere.is_file()


def test_imagenet_stale_listing_is_rebuilt(tmp_path):
    root = imagenet_tree(tmp_path)
    load_dataset("imagenet", tmp_path, val_is_test=True)
    w = "n01491361"
    with open(root / "classnames.txt", "a") as f:
        f.write(f"{w} tiger shark\n")
    for part in ("train", "val"):
        touch_image(root / "images" / part / w / "x.JPEG")
    ds = load_dataset("imagenet", tmp_path, val_is_test=True)
    assert ds.classnames[-1] == "tiger shark" and len(ds.train) == 13


def test_imagenet_errors(tmp_path):
    root = imagenet_tree(tmp_path)
    with pytest.raises(DatasetError, match="val_per_class"):
        load_dataset("imagenet", tmp_path)  # 50 per class from 4 images
    (root / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt.*data/README.md"):
        load_dataset("imagenet", tmp_path)


def variant_classnames(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("\n".join(f"{w} {n}" for w, n in WNIDS.items()))


def test_imagenet_v2_numbered_folders_and_sibling_classnames(tmp_path):
    variant_classnames(tmp_path / "imagenet")  # only the sibling imagenet/ has the list
    image_dir = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in range(3):
        for i in range(2):
            touch_image(image_dir / str(label) / f"{i}.jpeg")
    ds = load_dataset("imagenet_v2", tmp_path)
    assert ds.train == [] and ds.val == [] and len(ds.test) == 6
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert [d.label for d in ds.test] == [0, 0, 1, 1, 2, 2]
    assert ds.extra["imagenet_indices"] == [0, 1, 2]
    assert ds.templates == load_dataset("imagenet_v2", tmp_path).templates
    (image_dir / "2" / "0.jpeg").unlink()
    (image_dir / "2" / "1.jpeg").unlink()
    (image_dir / "2").rmdir()
    with pytest.raises(DatasetError, match="class 2"):
        load_dataset("imagenet_v2", tmp_path)


def test_imagenet_sketch(tmp_path):
    root = tmp_path / "imagenet-sketch"
    variant_classnames(root)
    for w in ("n01443537", "n01484850"):  # one class missing: labels stay ImageNet indices
        touch_image(root / "images" / w / "sketch_0.JPEG")
    ds = load_dataset("imagenet_sketch", tmp_path)
    assert ds.num_classes == 3
    assert [d.label for d in ds.test] == [1, 2]


@pytest.mark.parametrize(
    ("name", "folder", "sub"),
    [
        ("imagenet_a", "imagenet-adversarial", "imagenet-a"),
        ("imagenet_r", "imagenet-rendition", "imagenet-r"),
    ],
)
def test_imagenet_a_r_200_class_subsets(tmp_path, name, folder, sub):
    root = tmp_path / folder
    variant_classnames(tmp_path / folder)
    for w in ("n01484850", "n01440764"):  # a subset of the ImageNet classes
        for i in range(2):
            touch_image(root / sub / w / f"{i}.jpg")
    (root / sub / "README.txt").write_text("not a class")
    ds = load_dataset(name, tmp_path)
    assert ds.classnames == ["tench", "great white shark"]  # sorted wnids, labels 0..n-1
    assert [d.label for d in ds.test] == [0, 0, 1, 1]
    assert ds.extra["imagenet_indices"] == [0, 2]
    assert ds.extra["wnids"] == ["n01440764", "n01484850"]
    assert len(ds.negative_templates) == 14


# --- errors --------------------------------------------------------------------------------------


def test_missing_dataset_folder_names_path_and_readme(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("oxford_pets", tmp_path)
    assert str(tmp_path / "oxford_pets") in str(e.value) and "data/README.md" in str(e.value)


def test_unknown_dataset_lists_choices(tmp_path):
    with pytest.raises(
        DatasetError, match="choose one of: .*caltech101.*imagenet_r.*folder:<path>"
    ):
        load_dataset("imagenet1k", tmp_path)


def test_missing_split_and_annotations_names_both(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        load_dataset("oxford_pets", tmp_path)
    msg = str(e.value)
    assert "split_zhou_OxfordPets.json" in msg and "trainval.txt" in msg and "README" in msg


def test_missing_image_folder(tmp_path):
    (tmp_path / "dtd").mkdir()
    with pytest.raises(DatasetError, match=r"dtd/images.*data/README.md"):
        load_dataset("dtd", tmp_path)


def test_split_file_pointing_at_missing_images(tmp_path):
    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    rows = {"train": [["banded/banded_0001.jpg", 0, "banded"]], "val": [], "test": []}
    (root / "split_zhou_DescribableTextures.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="banded_0001.jpg, which does not exist"):
        load_dataset("dtd", tmp_path)


def test_corrupt_split_file(tmp_path):
    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    (root / "split_zhou_DescribableTextures.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset("dtd", tmp_path)


def test_class_too_small_to_split(tmp_path):
    class_folders(tmp_path / "dtd" / "images", {"banded": 5, "tiny": 2})
    with pytest.raises(DatasetError, match="'tiny' has 2 images"):
        load_dataset("dtd", tmp_path)


def test_relative_data_root_gives_absolute_paths(tmp_path, monkeypatch):
    class_folders(tmp_path / "data" / "dtd" / "images", {"banded": 5, "zigzagged": 5})
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("dtd", "data")
    assert all(Path(d.impath).is_absolute() for d in ds.train + ds.val + ds.test)
    assert ds.root == tmp_path / "data" / "dtd"
    imagenet_tree(tmp_path / "data")
    assert Path(load_dataset("imagenet", "data", val_per_class=1).val[0].impath).is_absolute()
