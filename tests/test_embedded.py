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
TASKS = {"emoji_openmoji_subcategory": "emoji", "fashion_mnist": "fashion_mnist"}


@pytest.fixture(scope="module")
def data_root() -> Path:
    missing = sorted({g for t, g in TASKS.items() if read_task_record(DATA, t) is None})
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


def test_adapters_beat_zero_shot_on_a_hard_task(data_root, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    base = config(data_root, cache, dataset="fashion_mnist", backbone="tiny-emoji-rn", shots=16)
    zero_shot = run(base.replace(method="zero_shot", shots=0))["accuracy"]
    for method in ("tip_adapter_f", "linear_probe"):
        accuracy = run(base.replace(method=method))["accuracy"]
        assert accuracy > zero_shot + 15, (method, accuracy, zero_shot)
