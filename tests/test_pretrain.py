"""Pretraining on a fake emoji corpus: learning, resuming, checkpoint round trip, evaluation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones import load_backbone
from fewclip.pretrain.data import build_training_set, read_corpus
from fewclip.pretrain.evaluate import evaluate_backbone
from fewclip.pretrain.train import PretrainConfig, augment, pretrain

COLOURS = {
    "red circle": (220, 30, 30),
    "green leaf": (30, 200, 30),
    "blue sea": (30, 30, 220),
    "yellow sun": (240, 220, 20),
    "black cat": (10, 10, 10),
    "purple grapes": (140, 30, 160),
}


def make_corpus(root, styles=("google", "twitter", "openmoji")):
    """Each 'emoji' is a flat colour disc; styles differ in disc size."""
    corpus = root / "emoji-corpus"
    rows = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        images = {}
        for s, style in enumerate(styles):
            (corpus / "images" / style).mkdir(parents=True, exist_ok=True)
            im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            arr = np.zeros((64, 64, 4), dtype=np.uint8)
            yy, xx = np.mgrid[:64, :64]
            r = 20 + 6 * s
            disc = (yy - 32) ** 2 + (xx - 32) ** 2 < r * r
            arr[disc] = (*colour, 255)
            im = Image.fromarray(arr, "RGBA")
            rel = f"images/{style}/{i}.png"
            im.save(corpus / rel)
            images[style] = [rel]
        rows.append(
            {
                "id": f"E{i}",
                "name": name,
                "short_names": [name.replace(" ", "_")],
                "category": "c",
                "subcategory": "sub",
                "heldout": i == len(COLOURS) - 1,
                "images": images,
            }
        )
    (corpus / "emoji.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus


def test_corpus_reading_skips_heldout(tmp_path):
    corpus = make_corpus(tmp_path)
    assert len(read_corpus(corpus)) == len(COLOURS)
    data = build_training_set(corpus)
    assert [e.name for e in data.emoji] == list(COLOURS)[:-1]
    assert data.images.shape == (2 * (len(COLOURS) - 1), 3, 64, 64)  # google + twitter only
    images, captions = data.sample_batch(4, random.Random(0))
    assert images.shape == (4, 3, 64, 64) and len(set(captions)) == 4


def test_missing_corpus_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="fewclip.offline prepare"):
        read_corpus(tmp_path / "nope")


def test_augment_shapes_and_determinism():
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    a = augment(images, 32, torch.Generator().manual_seed(1))
    b = augment(images, 32, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    # a white image stays white (up to normalisation) whatever the crop
    white = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    w = augment(white, 32, torch.Generator().manual_seed(0), grayscale_p=1.0)
    assert torch.allclose(w[:, 0], w[0, 0, 0, 0].expand_as(w[:, 0]), atol=1e-4)


def test_pretrain_learns_resumes_and_round_trips(tmp_path):
    corpus = make_corpus(tmp_path)
    cfg = PretrainConfig(
        arch="fewclip-test-rn",
        corpus=str(corpus),
        out_dir=str(tmp_path / "runs"),
        steps=60,
        batch_size=5,
        lr=3e-3,
        warmup=5,
        checkpoint_every=30,
        log_every=10,
        crop_scale_min=0.9,
        grayscale_p=0.0,
    )
    ckpt = pretrain(cfg, progress=False)
    log = [json.loads(r) for r in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
    assert log[-1]["loss"] < log[0]["loss"]

    # resuming from the step-60 state with more steps continues, not restarts
    cfg.steps = 70
    pretrain(cfg, progress=False)
    log2 = [json.loads(r) for r in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [10, 20, 30, 40, 50, 60, 70]

    # the fp16 checkpoint loads back through the user path and classifies the colours
    bb = load_backbone("fewclip-test-rn", str(ckpt))
    assert bb.is_pretrained and bb.weights_file == str(ckpt)
    result = evaluate_backbone(bb, corpus)
    assert result["seen_names"]["google"]["classes"] == len(COLOURS) - 1
    assert result["seen_names"]["google"]["top1"] > 100 / (len(COLOURS) - 1)
