"""Shared fixtures: tiny random backbones, full-size random checkpoints, small image folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fewclip.backbones import load_backbone, save_checkpoint
from fewclip.data.base import Datum


@pytest.fixture(scope="session")
def test_rn():
    return load_backbone("fewclip-test-rn", None, device="cpu")


@pytest.fixture(scope="session")
def test_vit():
    return load_backbone("fewclip-test-vit", None, device="cpu")


@pytest.fixture(scope="session")
def fullsize_checkpoint(tmp_path_factory):
    """``fullsize_checkpoint("RN50")``: a random-weight full-size open_clip checkpoint file,
    written once per test run (fp16 safetensors; the architecture's own random init, seed 0),
    as a user with downloaded weights would have one."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("fullsize")
    made: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in made:
            torch.manual_seed(0)
            model = open_clip.create_model(arch, pretrained=None)
            made[arch] = str(save_checkpoint(model, folder / f"{arch}.safetensors", half=True))
        return made[arch]

    return make


def write_images(folder, num_classes=3, per_class=4, size=16, seed=0):
    """Coloured noise images, one colour per class; returns Datum items."""
    rng = np.random.default_rng(seed)
    items = []
    for c in range(num_classes):
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            arr = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            path = folder / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            items.append(Datum(str(path), c, f"class{c}"))
    return items


@pytest.fixture
def image_items(tmp_path):
    return write_images(tmp_path / "images")
