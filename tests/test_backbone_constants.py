"""The base check: trained methods that end below zero-shot CLIP on their own training
classes are listed with their numbers (fewclip.evidence.below_zero_shot), shown by the
notebooks and repeated in the report's first lines (fewclip.reports)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fewclip import evidence as ev
from fewclip import notebook as nb
from fewclip.backbones import PROJECT_WEIGHTS, crop_key, load_backbone, read_pretrain_crop
from fewclip.images import DASSL_CROP_SCALE
from fewclip.methods.coop import CoOp as COOP
from fewclip.prompting.backbone_constants import train_crop_scale
from fewclip.prompting.encoder_base import dassl_transform
from fewclip.reports.build import base_check_lines, report_header


def row(method, base, *, seed=1, dataset="d", protocol="base_to_new", variant="", **extra):
    out = {
        "status": "done",
        "method": method,
        "variant": variant,
        "dataset": dataset,
        "protocol": protocol,
        "backbone": "tiny",
        "pretrained": "default",
        "shots": 0 if method == "zero_shot" else 4,
        "seed": seed,
        "base_accuracy": base if protocol == "base_to_new" else float("nan"),
        "accuracy": base if protocol == "few_shot" else float("nan"),
        "trainable_params": 0 if method in ("zero_shot", "tip_adapter") else 100,
        "chosen": {"best_epoch": seed},
    }
    return {**out, **extra}


def frame(*rows):
    return pd.DataFrame(list(rows))


def test_lists_a_method_below_zero_shot_with_its_seed_mean_and_epochs():
    runs = frame(
        row("zero_shot", 43.8),
        row("cocoop", 30.0, seed=1),
        row("cocoop", 36.0, seed=2),  # mean 33.0 < 43.8
        row("apex", 53.3),  # above: not listed
        row("coop", 43.8),  # equal: not listed
    )
    table = ev.below_zero_shot(runs, causes={"cocoop": "the Meta-Net's random bias"})
    assert table["label"].tolist() == ["cocoop"]
    r = table.iloc[0]
    assert (r.trained, r.zero_shot, r.gap, r.seeds) == (33.0, 43.8, -10.8, 2)
    assert r.chosen_epochs == "1, 2"
    assert r.cause == "the Meta-Net's random bias"
    (line,) = ev.below_zero_shot_lines(table, "tiny-emoji-vit version 4")
    assert "33.0% against 43.8% (-10.8)" in line and "Meta-Net" in line


def test_compares_on_the_same_classes_only_and_skips_untrained_methods():
    runs = frame(
        row("zero_shot", 40.0, dataset="a"),
        row("zero_shot", 10.0, dataset="b"),
        row("coop", 20.0, dataset="b"),  # above b's zero-shot, below a's
        row("coop", 5.0, dataset="c"),  # no zero-shot on c: not listed
        row("tip_adapter", 1.0, dataset="a"),  # no trainable parameters
        row("tomm", 30.0, dataset="a", variant="CTP only"),
        row("tomm", 39.0, dataset="a", variant="CTP + TFT"),
    )
    table = ev.below_zero_shot(runs, causes={"CTP only": "x", "tomm": "y"}, tolerance=2.0)
    assert table[["label", "dataset", "cause"]].values.tolist() == [["CTP only", "a", "x"]]


def test_few_shot_compares_accuracy_and_failed_runs_do_not_count():
    runs = frame(
        row("zero_shot", 50.0, protocol="few_shot"),
        row("clip_adapter", 45.0, protocol="few_shot"),
        row("linear_probe", 10.0, protocol="few_shot", status="failed"),
    )
    table = ev.below_zero_shot(runs)
    assert table["label"].tolist() == ["clip_adapter"] and table.iloc[0].cause == "unknown"
    known = ev.below_zero_shot(frame(row("zero_shot", 50.0), row("cocoop", 40.0)))
    assert known.iloc[0].cause == ev.BELOW_ZERO_SHOT_CAUSES["cocoop"]
    assert ev.below_zero_shot(runs.iloc[:0]).empty
    none = ev.below_zero_shot(frame(row("zero_shot", 50.0), row("coop", 60.0)))
    assert none.empty
    assert "at or above zero-shot" in ev.below_zero_shot_lines(none)[0]


def test_a_gap_inside_the_noise_says_so_and_a_clear_one_stays_unknown():
    """With per-image records the gap gets its paired interval: a gap whose interval
    includes 0 is named as not resolved; one that excludes 0 and has no known cause stays
    "unknown" (the report must not explain it away)."""
    from fewclip.metrics import encode_correct, labels_digest

    rng = np.random.default_rng(0)
    labels = torch.zeros(400, dtype=torch.long)
    zero_bits = rng.random(400) < 0.5

    def bits_row(method, bits, seed=1):
        bits = torch.as_tensor(np.asarray(bits, dtype=bool))
        logits = torch.stack([bits.float(), 1 - bits.float()], 1)
        base = {"correct": encode_correct(logits, labels), "test_labels": labels_digest(labels)}
        out = row(method, float(bits.float().mean() * 100), seed=seed)
        return {**out, "metrics": {"base": base}, "config": {"method": method, "seed": seed}}

    hits, misses = np.flatnonzero(zero_bits), np.flatnonzero(~zero_bits)
    close = [zero_bits.copy() for _ in range(3)]
    for s, bits in enumerate(close):  # per seed 3 hits lost, 2 gained: -0.25 points
        bits[hits[3 * s : 3 * s + 3]], bits[misses[2 * s : 2 * s + 2]] = False, True
    far = [zero_bits & (rng.random(400) < 0.7) for _ in range(3)]  # loses 30% of its hits
    runs = frame(
        bits_row("zero_shot", zero_bits),
        *(bits_row("promptsrc", b, seed=s) for s, b in enumerate(close, 1)),
        *(bits_row("kgcoop", b, seed=s) for s, b in enumerate(far, 1)),
    )
    table = ev.below_zero_shot(runs).set_index("label")
    assert table.loc["kgcoop", "cause"] == "unknown" and table.loc["kgcoop", "gap_high"] < 0
    src = table.loc["promptsrc"]
    assert src.gap == -0.2 and src.gap_low <= 0 <= src.gap_high
    assert src.cause == ev.WITHIN_NOISE
    lines = ev.below_zero_shot_lines(ev.below_zero_shot(runs))
    assert any("kgcoop" in line and "95% interval [" in line for line in lines)


def test_report_header_repeats_the_notebook_sentences(tmp_path):
    runs = frame(row("zero_shot", 43.8), row("tomm", 29.6))
    lines = ev.below_zero_shot_lines(ev.below_zero_shot(runs, {"tomm": "cause"}))
    book = nbformat.v4.new_notebook()
    for _ in range(2):
        cell = nbformat.v4.new_code_cell("nb.show_base_check(runs)")
        cell.outputs = [
            nbformat.v4.new_output(
                "display_data",
                data={"text/markdown": lines[0]},
                metadata={nb.BASE_CHECK_METADATA: lines},
            )
        ]
        book.cells.append(cell)
    path = tmp_path / "r.ipynb"
    nbformat.write(book, path)
    assert base_check_lines(path) == lines  # once, though shown twice
    header = report_header(
        "r", {}, notebook=str(path), code=True, commit="abc", checks=base_check_lines(path)
    )
    assert "**tomm** ends **below zero-shot**" in header and "29.6% against 43.8%" in header


# --------------------------------------------------------------------------- training crop


def fake_backbone(crop):
    return SimpleNamespace(pretrain_crop_min=crop)


def test_crop_follows_the_backbone_and_the_official_range_is_one_switch_away():
    openai, tiny = fake_backbone(None), fake_backbone(0.6)
    assert train_crop_scale(openai, "backbone") == DASSL_CROP_SCALE == (0.08, 1.0)
    assert train_crop_scale(tiny, "backbone") == (0.6, 1.0)
    assert train_crop_scale(tiny, "official") == DASSL_CROP_SCALE
    assert train_crop_scale(fake_backbone(0.01), "backbone") == DASSL_CROP_SCALE  # never below
    assert train_crop_scale(tiny, 0.3) == (0.3, 1.0)
    for bad in (0.0, 1.5, "tiny", True):
        with pytest.raises(ValueError, match="crop_scale_min"):
            train_crop_scale(tiny, bad)
    with pytest.raises(ValueError, match="crop_scale_min must be"):
        COOP(crop_scale_min=2.0)


def test_the_tiny_models_declare_their_pretraining_crop_and_others_none(tmp_path):
    for arch in ("tiny-emoji-vit", "tiny-emoji-rn"):
        path = PROJECT_WEIGHTS[arch].path
        declared = json.loads(path.with_suffix(".config.json").read_text())["crop_scale_min"]
        assert read_pretrain_crop(path) == declared == 0.6
        assert crop_key(arch, "default") == "|crop:0.6"
    assert read_pretrain_crop(None) is None  # random init, as OpenAI / LAION weights
    assert crop_key("fewclip-test-vit", None) == ""  # run keys as before
    mine = tmp_path / "mine.safetensors"
    mine.with_suffix(".config.json").write_text('{"crop_scale_min": 7}')
    with pytest.raises(ValueError, match="crop_scale_min in .* must be a number"):
        read_pretrain_crop(mine)


def test_methods_train_on_the_crop_range_they_resolve():
    tiny = fake_backbone(0.6)
    assert COOP().uses_backbone_crop and COOP().crop_scale(tiny) == (0.6, 1.0)
    official = COOP(crop_scale_min="official")
    assert not official.uses_backbone_crop and official.crop_scale(tiny) == DASSL_CROP_SCALE
    assert COOP().crop_scale(fake_backbone(None)) == DASSL_CROP_SCALE


def test_views_differ_with_the_crop_and_the_official_range_is_the_old_transform():
    backbone = load_backbone("fewclip-test-vit", None, device="cpu")
    image = Image.fromarray(
        (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8), "RGB"
    )

    def view(scale):
        transform = dassl_transform(backbone, scale) if scale else dassl_transform(backbone)
        return transform(image, torch.Generator().manual_seed(3))

    assert torch.equal(view(None), view(DASSL_CROP_SCALE))  # the default: Dassl's range
    assert not torch.equal(view(DASSL_CROP_SCALE), view((0.6, 1.0)))
