"""Full-size architectures without weights: RN50 and ViT-B-16 with random weights, saved once
to a checkpoint file and loaded through the checkpoint path (as a user with downloaded
weights would), run by every method for one short fit under every protocol it supports, on
tiny fake datasets in CoOp's layout (EuroSAT, DTD: a few generated images per class and a
``split_zhou_*.json``). The tiny models cannot show what only appears at full size: 224-pixel
inputs, 77 text tokens, ModifiedResNet's attention pool, ViT-B/16's 197 tokens with APEX's
prompts, 1,024- versus 512-dimensional features.

Marked ``slow`` (``-m "not slow"`` leaves them out locally); CI runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fewclip.config import RunConfig
from fewclip.methods import METHODS
from fewclip.runner import run, transfers_to_new_classes

pytestmark = pytest.mark.slow

#: (architecture, feature dimension) of the two papers' backbones.
ARCHS = {"RN50": 1024, "ViT-B-16": 512}
#: Methods that prompt the image tokens: a ViT only (they refuse a ResNet with a clear error).
VIT_ONLY = {"apex", "maple", "promptsrc"}
#: Per-architecture options: CLIP-LoRA adapts a ResNet's text encoder only (as its official code).
ARCH_OPTIONS = {("RN50", "clip_lora"): {"encoder": "text"}}
#: One short fit each.
FAST = {
    "zero_shot": {},
    "ape": {"steps": (10, 4, 4)},
    "gda": {},
    "ape_t": {"epochs": 1, "steps": (10, 4, 1)},
    "clap": {"epochs": 1},
    "lp_pp": {"epochs": 2},
    "taskres": {"epochs": 1},
    "linear_probe": {"refine_steps": 0},
    "clip_adapter": {"epochs": 1},
    "tip_adapter": {},
    "tip_adapter_f": {"epochs": 1},
    "dual_adapter": {"epochs": 1},
    "coop": {"epochs": 1, "n_ctx": 2},
    "cocoop": {"epochs": 1, "batch_size": 2},
    "apex": {"epochs": 1},
    "tomm": {"epochs": 1, "batch_size": 2},
    "kgcoop": {"epochs": 1, "batch_size": 2},
    "prograd": {"epochs": 1, "n_ctx": 8},
    "proda": {"epochs": 1, "n_prompts": 4, "n_ctx": 2},
    "maple": {"epochs": 1, "batch_size": 2},
    "promptsrc": {"epochs": 1, "batch_size": 2},
    "clip_lora": {"iterations": 1, "batch_size": 2},
}
EUROSAT = ("AnnualCrop", "Forest", "SeaLake")
DTD = ("banded", "zigzagged")
PER_CLASS = {"train": 1, "val": 1, "test": 1}


def images(folder, classes, seed: int, per_class: dict | None = None) -> dict[str, list]:
    """A few 64-pixel noise images per class (one mean colour per class), split rows."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {part: [] for part in PER_CLASS}
    for label, name in enumerate(classes):
        colour = rng.integers(0, 255, 3)
        index = 0
        for part, count in (per_class or PER_CLASS).items():
            for _ in range(count):
                pixels = np.clip(colour + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
                path = folder / name / f"{name}_{index:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                rows[part].append([f"{name}/{path.name}", label, name])
                index += 1
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """CoOp's layout: eurosat/2750 + split_zhou_EuroSAT.json, dtd/images +
    split_zhou_DescribableTextures.json, and an image folder with DTD's classes (a shifted
    domain for domain generalisation)."""
    root = tmp_path_factory.mktemp("coop_layout")
    split = images(root / "eurosat" / "2750", EUROSAT, seed=0)
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    split = images(root / "dtd" / "images", DTD, seed=1)
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    # an image folder splits itself 50/20/30 per class: 4 images give one test image
    images(root / "dtd_shifted", DTD, seed=2, per_class={"train": 2, "val": 1, "test": 1})
    return root


#: protocol -> (training dataset, evaluation datasets)
PROTOCOLS = {
    "few_shot": ("eurosat", []),
    "base_to_new": ("eurosat", []),
    "cross_dataset": ("eurosat", ["dtd"]),
    "domain_generalisation": ("dtd", ["folder:dtd_shifted"]),
}


def supports(method: str, protocol: str) -> bool:
    """Every method runs few-shot and domain generalisation (same classes); the others need
    a method that classifies classes it was not trained on."""
    if protocol in ("few_shot", "domain_generalisation"):
        return True
    return transfers_to_new_classes(METHODS[method])


CASES = [
    (arch, method, protocol)
    for arch in ARCHS
    for method in sorted(METHODS)
    for protocol in PROTOCOLS
    if supports(method, protocol) and not (method in VIT_ONLY and arch != "ViT-B-16")
]


def test_the_cases_cover_every_method_and_protocol():
    assert set(FAST) == set(METHODS)
    assert {m for _, m, _ in CASES} == set(METHODS)
    assert {p for _, _, p in CASES} == set(PROTOCOLS)
    assert {(a, m) for a, m, p in CASES if p == "few_shot"} == {
        (a, m) for a in ARCHS for m in METHODS if m not in VIT_ONLY or a == "ViT-B-16"
    }


def config(arch: str, method: str, protocol: str, data, checkpoint: str) -> RunConfig:
    dataset, targets = PROTOCOLS[protocol]
    return RunConfig(
        method=method,
        dataset=dataset,
        backbone=arch,
        pretrained=checkpoint,
        shots=1,
        protocol=protocol,
        eval_datasets=targets,
        options={**FAST[method], **ARCH_OPTIONS.get((arch, method), {})},
        augment_views=1,
        data_root=str(data),
        cache_dir=str(data / "cache"),
        device="cpu",
        progress=False,
    )


@pytest.mark.parametrize("arch,method,protocol", CASES, ids=["-".join(c) for c in CASES])
def test_every_method_fits_at_full_size(arch, method, protocol, data, fullsize_checkpoint):
    checkpoint = fullsize_checkpoint(arch)
    record = run(config(arch, method, protocol, data, checkpoint))
    assert 0.0 <= record["accuracy"] <= 100.0
    backbone = record["backbone_info"]
    assert backbone["embed_dim"] == ARCHS[arch] and backbone["image_size"] == 224
    assert backbone["activation"] == "GELU"  # an open_clip-format file: the arch's own
    metrics = record["metrics"]
    if protocol == "few_shot":
        assert len(metrics["per_class_accuracy"]) == len(EUROSAT)
        assert metrics["test_images"] == len(EUROSAT) * PER_CLASS["test"]
    if protocol == "base_to_new":
        assert {"base_accuracy", "new_accuracy"} <= set(record)
        assert {"base", "new"} <= set(metrics)
    if protocol in ("cross_dataset", "domain_generalisation"):
        assert set(metrics["transfer"]) == set(PROTOCOLS[protocol][1])


@pytest.mark.parametrize("method", sorted(VIT_ONLY))
def test_vit_only_methods_refuse_a_resnet_clearly(method, data, fullsize_checkpoint):
    from fewclip.prompting.visual_prompts import VisualPromptError

    with pytest.raises(VisualPromptError, match="need a Vision Transformer"):
        run(config("RN50", method, "few_shot", data, fullsize_checkpoint("RN50")))
