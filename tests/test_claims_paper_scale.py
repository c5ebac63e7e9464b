"""The claims ledger at the papers' scale, end to end: ``claims.at_scale(ledger, "paper")``
turns two DualAdapter / CLIP-Adapter claims into their RN50 configurations on the CoOp
benchmarks, which run here on fake CoOp-layout data (EuroSAT and DTD: a few generated
images per class and their ``split_zhou_*.json``) with a random-weight full-size RN50
checkpoint, and get tested verdicts with the paper's number beside ours where the ledger
has one. Only the fit lengths are cut (one epoch), so the test exercises the plumbing a
user with real weights and data runs, not the numbers.

Marked ``slow`` (``-m "not slow"`` leaves it out locally); CI runs it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewclip import claims
from fewclip.config import RunConfig
from fewclip.runner import run

pytestmark = pytest.mark.slow

IDS = ["clip_adapter.beats_zero_shot", "dual_adapter.beats_tip_adapter_f_pooled"]
FAST = {
    "clip_adapter": {"epochs": 1},
    "tip_adapter_f": {"epochs": 1},
    "dual_adapter": {"epochs": 1},
}


def _coop_folder(root, folder, split_file, classes, seed):
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        colour = rng.integers(0, 255, 3)
        for part, count in (("train", 2), ("val", 1), ("test", 3)):
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 30, (64, 64, 3)), 0, 255)
                path = root / folder / name / f"{part}_{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
                split[part].append([f"{name}/{path.name}", label, name])
    (root / folder.split("/")[0] / split_file).write_text(json.dumps(split))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_scale")
    _coop_folder(root, "eurosat/2750", "split_zhou_EuroSAT.json", ("Forest", "SeaLake"), 0)
    _coop_folder(root, "dtd/images", "split_zhou_DescribableTextures.json", ("banded", "dotted"), 1)
    return root


def test_the_ledger_runs_at_paper_scale(data, fullsize_checkpoint):
    ledger = claims.load()
    ledger = ledger[ledger["id"].isin(IDS)].reset_index(drop=True)
    paper, backbones = claims.at_scale(ledger, "paper")
    assert backbones == {"RN50": "RN50"} and len(paper) == 2
    assert all("imagenet" in ds and len(ds) == 11 for ds in paper["datasets"])
    # the fake data stands for the eleven datasets; one shot, one epoch
    paper["datasets"] = [["eurosat", "dtd"] for _ in range(len(paper))]
    paper["shots"] = 1
    for side in ("a", "b"):
        paper[f"{side}_options"] = [
            {**o, **FAST.get(m, {})}
            for m, o in zip(paper[f"{side}_method"], paper[f"{side}_options"], strict=True)
        ]
    base = RunConfig(
        pretrained=fullsize_checkpoint("RN50"),
        data_root=str(data),
        cache_dir=str(data / "cache"),
        augment_views=1,
        device="cpu",
        progress=False,
    )
    # two seeds for every row (the rows' own seed counts are tested in test_claims.py)
    configs = claims.configs(paper, base, seeds=[1, 2], backbones=backbones, row_seeds=False)
    assert {c.backbone for c in configs} == {"RN50"}
    assert {c.method for c in configs} == {
        "clip_adapter",
        "zero_shot",
        "dual_adapter",
        "tip_adapter_f",
    }
    frame = pd.DataFrame([run(c) for c in configs])
    table = claims.evaluate(paper, frame, n_boot=100, seeds=[1, 2], row_seeds=False)
    table = table.set_index("id")
    # random weights may give both sides the same answers ("untested: A = B"): any verdict
    # but "not run" means every run the claims need was built, run and paired
    assert set(table["verdict"]) <= {*claims.TESTED, claims.UNTESTED}, table["detail"].to_dict()
    assert (table["n_seeds"] == 2).all() and (table["test_images"] == 12).all()
    assert table.loc["dual_adapter.beats_tip_adapter_f_pooled", "delta"] == 1.0
