"""Readers for the ten non-ImageNet CoOp benchmarks, in CoOp's folder layout.

Each reader takes the dataset folder (``<data root>/<folder>``) and reads CoOp's split file
(``split_zhou_*.json``). When the split file is absent it builds the split the way CoOp's
``datasets/*.py`` does and saves it in the same JSON format next to the data:

==============  ====================  ===============================================
name            folder                split when ``split_zhou_*.json`` is absent
==============  ====================  ===============================================
caltech101      caltech-101           class folders, 50/20/30 (2 folders ignored)
oxford_pets     oxford_pets           annotations/trainval.txt -> 80/20, test.txt
stanford_cars   stanford_cars         devkit .mat annotations -> 80/20, test .mat
oxford_flowers  oxford_flowers        imagelabels.mat per label, 50/20/30
food101         food-101              class folders, 50/20/30
fgvc_aircraft   fgvc_aircraft         always the official images_variant_*.txt
sun397          sun397                ClassName.txt, Training_01 -> 80/20, Testing_01
dtd             dtd                   class folders, 50/20/30
eurosat         eurosat               class folders, 50/20/30, readable names
ucf101          ucf101                ucfTrainTestlist *01 lists -> 80/20, test list
==============  ====================  ===============================================

``split_seed`` seeds the generation (one ``random.Random``; CoOp used the global RNG
seeded with the run's seed). Paths in split files are relative to the image folder, except
StanfordCars whose paths are relative to the dataset folder (``cars_train/...``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .base import Dataset, DatasetError, Datum, register_dataset
from .build import absolute, make_dataset, require_dir, require_file, require_source
from .splits import SPLIT_SEED, read_or_create_split, split_folder, split_per_class, split_trainval

CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_RENAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy comes with scikit-learn
        raise DatasetError(f"reading {path} needs scipy (pip install scipy)") from e
    return loadmat(str(path))


def _folder_dataset(
    name: str,
    root: Path,
    image_subdir: str,
    split_name: str,
    split_seed: int,
    description: str,
    ignored: tuple[str, ...] = (),
    renames: dict[str, str] | None = None,
) -> Dataset:
    """Datasets whose generated split is CoOp's ``read_and_split_data`` over class folders."""
    image_dir = require_dir(root / image_subdir, f"the {name} image folder")
    splits = read_or_create_split(
        root / split_name,
        image_dir,
        lambda: split_folder(image_dir, split_seed, ignored=ignored, new_cnames=renames),
    )
    return make_dataset(name, root, splits, renames=renames, description=description)


@register_dataset("caltech101", folder="caltech-101")
def caltech101(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """Caltech101: 100 object classes (background and Faces_easy dropped)."""
    root = absolute(root)
    return _folder_dataset(
        "caltech101",
        root,
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        split_seed,
        "Caltech101: 100 object categories",
        ignored=CALTECH_IGNORED,
        renames=CALTECH_RENAMES,
    )


@register_dataset("food101", folder="food-101")
def food101(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """Food101: 101 dishes."""
    root = absolute(root)
    return _folder_dataset(
        "food101", root, "images", "split_zhou_Food101.json", split_seed, "Food-101: 101 dishes"
    )


@register_dataset("dtd", folder="dtd")
def dtd(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """DTD: 47 describable textures."""
    root = absolute(root)
    return _folder_dataset(
        "dtd",
        root,
        "images",
        "split_zhou_DescribableTextures.json",
        split_seed,
        "Describable Textures: 47 texture categories",
    )


@register_dataset("eurosat", folder="eurosat")
def eurosat(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """EuroSAT: 10 land-use classes of Sentinel-2 RGB tiles, with CoOp's readable names."""
    root = absolute(root)
    return _folder_dataset(
        "eurosat",
        root,
        "2750",
        "split_zhou_EuroSAT.json",
        split_seed,
        "EuroSAT: 10 land-use classes from satellite images",
        renames=EUROSAT_RENAMES,
    )


PETS_SPLIT = "split_zhou_OxfordPets.json"


def _read_pets_list(root: Path, image_dir: Path, list_name: str) -> list[Datum]:
    path = require_source(root / "annotations" / list_name, root / PETS_SPLIT)
    items = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        imname, label, _species, _breed_id = line.strip().split(" ")
        breed = "_".join(imname.split("_")[:-1]).lower()
        items.append(Datum(str(image_dir / f"{imname}.jpg"), int(label) - 1, breed))
    return items


@register_dataset("oxford_pets", folder="oxford_pets")
def oxford_pets(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """Oxford-IIIT Pets: 37 cat and dog breeds."""
    root = absolute(root)
    image_dir = require_dir(root / "images", "the Oxford Pets image folder")

    def create() -> dict[str, list[Datum]]:
        trainval = _read_pets_list(root, image_dir, "trainval.txt")
        test = _read_pets_list(root, image_dir, "test.txt")
        train, val = split_trainval(trainval, split_seed)
        return {"train": train, "val": val, "test": test}

    splits = read_or_create_split(root / PETS_SPLIT, image_dir, create)
    return make_dataset("oxford_pets", root, splits, description="Oxford-IIIT Pets: 37 breeds")


def _read_cars(root: Path, image_subdir: str, anno_file: Path, meta_file: Path) -> list[Datum]:
    annos = _loadmat(anno_file)["annotations"][0]
    meta = _loadmat(meta_file)["class_names"][0]
    items = []
    for anno in annos:
        imname = str(anno["fname"][0])
        label = int(anno["class"][0, 0]) - 1
        words = str(meta[label][0]).split(" ")
        classname = " ".join([words[-1], *words[:-1]])  # "Audi S4 2012" -> "2012 Audi S4"
        items.append(Datum(str(root / image_subdir / imname), label, classname))
    return items


@register_dataset("stanford_cars", folder="stanford_cars")
def stanford_cars(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """Stanford Cars: 196 models, named "<year> <make> <model>"; split paths are relative to
    the dataset folder."""
    root = absolute(root)

    def create() -> dict[str, list[Datum]]:
        split_file = root / "split_zhou_StanfordCars.json"
        trainval_file = require_source(root / "devkit" / "cars_train_annos.mat", split_file)
        test_file = require_source(root / "cars_test_annos_withlabels.mat", split_file)
        meta_file = require_source(root / "devkit" / "cars_meta.mat", split_file)
        trainval = _read_cars(root, "cars_train", trainval_file, meta_file)
        test = _read_cars(root, "cars_test", test_file, meta_file)
        train, val = split_trainval(trainval, split_seed)
        return {"train": train, "val": val, "test": test}

    splits = read_or_create_split(root / "split_zhou_StanfordCars.json", root, create)
    return make_dataset("stanford_cars", root, splits, description="Stanford Cars: 196 models")


@register_dataset("oxford_flowers", folder="oxford_flowers")
def oxford_flowers(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """Oxford Flowers-102: 102 flower species, names from ``cat_to_name.json``."""
    root = absolute(root)
    image_dir = require_dir(root / "jpg", "the Flowers102 image folder")

    def create() -> dict[str, list[Datum]]:
        split_file = root / "split_zhou_OxfordFlowers.json"
        labels = _loadmat(require_source(root / "imagelabels.mat", split_file))
        names_file = require_source(root / "cat_to_name.json", split_file)
        lab2cname = json.loads(names_file.read_text())
        tracker: dict[int, list[str]] = {}
        for i, label in enumerate(labels["labels"][0]):
            path = str(image_dir / f"image_{i + 1:05d}.jpg")
            tracker.setdefault(int(label), []).append(path)
        rng = random.Random(split_seed)
        out: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
        for label, paths in tracker.items():
            parts = split_per_class(paths, label - 1, lab2cname[str(label)], rng)
            for name, part in zip(("train", "val", "test"), parts, strict=True):
                out[name].extend(part)
        return out

    splits = read_or_create_split(root / "split_zhou_OxfordFlowers.json", image_dir, create)
    return make_dataset(
        "oxford_flowers", root, splits, description="Oxford Flowers-102: 102 species"
    )


@register_dataset("fgvc_aircraft", folder="fgvc_aircraft")
def fgvc_aircraft(root: Path) -> Dataset:
    """FGVC-Aircraft: 100 variants; official ``images_variant_{train,val,test}.txt`` splits."""
    root = absolute(root)
    image_dir = require_dir(root / "images", "the FGVC-Aircraft image folder")
    variants = require_file(root / "variants.txt", "the FGVC-Aircraft class list variants.txt")
    classnames = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    cname2lab = {c: i for i, c in enumerate(classnames)}
    splits: dict[str, list[Datum]] = {}
    for part in ("train", "val", "test"):
        path = require_file(root / f"images_variant_{part}.txt", "the FGVC-Aircraft split list")
        items = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            imname, *words = line.strip().split(" ")
            classname = " ".join(words)
            if classname not in cname2lab:
                raise DatasetError(f"{path}: variant {classname!r} is not in {variants}")
            items.append(Datum(str(image_dir / f"{imname}.jpg"), cname2lab[classname], classname))
        splits[part] = items
    return make_dataset(
        "fgvc_aircraft",
        root,
        splits,
        classnames=classnames,
        description="FGVC-Aircraft: 100 aircraft variants",
    )


def _read_sun_list(root: Path, image_dir: Path, cname2lab: dict[str, int], name: str):
    path = require_source(root / name, root / "split_zhou_SUN397.json")
    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        imname = line.strip()[1:]  # drop the leading "/"
        folder = imname.rsplit("/", 1)[0]  # "a/abbey" or "a/apartment_building/outdoor"
        words = folder.split("/")[1:][::-1]  # drop the letter; "outdoor" first
        items.append(Datum(str(image_dir / imname), cname2lab[folder], " ".join(words)))
    return items


@register_dataset("sun397", folder="sun397")
def sun397(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """SUN397: 397 scene categories, e.g. "outdoor apartment_building"."""
    root = absolute(root)
    image_dir = require_dir(root / "SUN397", "the SUN397 image folder")

    def create() -> dict[str, list[Datum]]:
        names = require_source(root / "ClassName.txt", root / "split_zhou_SUN397.json")
        classes = [line.strip()[1:] for line in names.read_text().splitlines() if line.strip()]
        cname2lab = {c: i for i, c in enumerate(classes)}
        trainval = _read_sun_list(root, image_dir, cname2lab, "Training_01.txt")
        test = _read_sun_list(root, image_dir, cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval, split_seed)
        return {"train": train, "val": val, "test": test}

    splits = read_or_create_split(root / "split_zhou_SUN397.json", image_dir, create)
    return make_dataset("sun397", root, splits, description="SUN397: 397 scene categories")


def _ucf_action(action: str) -> str:
    """ "ApplyEyeMakeup" -> "Apply_Eye_Makeup" (CoOp's renaming of the mid-frame folders)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@register_dataset("ucf101", folder="ucf101")
def ucf101(root: Path, split_seed: int = SPLIT_SEED) -> Dataset:
    """UCF101: 101 actions, one middle frame per video (CoOp's UCF-101-midframes)."""
    root = absolute(root)
    image_dir = require_dir(root / "UCF-101-midframes", "the UCF101 mid-frame folder")

    def read_list(name: str, cname2lab: dict[str, int]) -> list[Datum]:
        path = require_source(root / "ucfTrainTestlist" / name, root / "split_zhou_UCF101.json")
        items = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            action, filename = line.strip().split(" ")[0].split("/")
            renamed = _ucf_action(action)
            impath = image_dir / renamed / filename.replace(".avi", ".jpg")
            items.append(Datum(str(impath), cname2lab[action], renamed))
        return items

    def create() -> dict[str, list[Datum]]:
        ind = require_source(
            root / "ucfTrainTestlist" / "classInd.txt", root / "split_zhou_UCF101.json"
        )
        cname2lab = {}
        for line in ind.read_text().splitlines():
            if line.strip():
                label, action = line.strip().split(" ")
                cname2lab[action] = int(label) - 1
        trainval = read_list("trainlist01.txt", cname2lab)
        test = read_list("testlist01.txt", cname2lab)
        train, val = split_trainval(trainval, split_seed)
        return {"train": train, "val": val, "test": test}

    splits = read_or_create_split(root / "split_zhou_UCF101.json", image_dir, create)
    return make_dataset("ucf101", root, splits, description="UCF101: 101 human actions")
