"""benchmarks/gpu_check.py runs as written; here with device=cpu (no GPU in CI): the CPU
run against itself must agree exactly, and a CUDA request without CUDA says so."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_on_cpu(tmp_path, capsys):
    out = tmp_path / "g.json"
    methods = ["zero_shot", "tip_adapter", "clip_adapter", "coop", "apex"]
    status = load().main(
        [
            "--device",
            "cpu",
            "--archs",
            "fewclip-test-rn",
            "fewclip-test-vit",
            "--methods",
            *methods,
            "--json",
            str(out),
        ]  # fmt: skip
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "all checks passed" in text and "NOT meaningful" in text
    results = json.loads(out.read_text())
    rn, vit = results["archs"]["fewclip-test-rn"], results["archs"]["fewclip-test-vit"]
    assert "apex" not in rn["methods"] and "apex" in vit["methods"]  # ViT only
    for arch in (rn, vit):
        assert arch["features"]["image_max_abs_diff"] == 0.0  # cpu against cpu: identical
        for name, row in arch["methods"].items():
            assert row["diff"] == 0.0, name  # deterministic on one device
            assert row["cpu"]["fit_seconds"] is not None
    assert "fit cpu s" in text and "coop" in text


def test_cuda_without_cuda_is_one_clear_message(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: run benchmarks/gpu_check.py itself")
    assert load().main(["--device", "cuda"]) == 1
    assert "CUDA is not available here" in capsys.readouterr().err
