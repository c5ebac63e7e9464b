"""Every arm of every claim in the shipped ledger is deterministic: the same configuration
run twice (the second time in the opposite order, so no run leans on the random state
another left behind) gives the same accuracy and the same answer on every test image.

The arms run as the ledger states them (method, options, protocol, label noise, evaluation
datasets) on the random-weight test backbones and a small coloured-squares folder, at 2
shots and one augmented view, so the whole ledger stays cheap; the record also names the
CPU kernels it ran on (results differ between instruction sets, not between runs)."""

from __future__ import annotations

import json

import pytest
import torch

from fewclip import claims
from fewclip.config import RunConfig
from fewclip.prompting.toy import coloured_squares
from fewclip.runner import run


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    coloured_squares(root / "data" / "squares", num_classes=6, per_class=6, seed=0)
    coloured_squares(root / "data" / "squares_dg", num_classes=6, per_class=4, seed=5)
    ledger = claims.load()
    ledger["datasets"] = [["folder:squares"] * len(set(ds)) for ds in ledger["datasets"]]
    for config in ledger["config"]:
        if "eval_datasets" in config:
            config["eval_datasets"] = ["folder:squares_dg"]
    # two datasets of an interaction become one here: keep each claim's runs distinct
    ledger["datasets"] = [ds[:1] for ds in ledger["datasets"]]
    ledger["shots"] = 2
    base = RunConfig(
        pretrained="none",
        data_root=str(root / "data"),
        cache_dir=str(root / "cache"),
        augment_views=1,
        allow_fewer=True,
        progress=False,
    )
    backbones = {"rn": "fewclip-test-rn", "vit": "fewclip-test-vit"}
    return claims.configs(ledger, base, seeds=[1], backbones=backbones, row_seeds=False)


def _answers(record) -> tuple:
    metrics = record["metrics"]
    parts = [metrics.get(k) for k in ("base", "new")] if "base" in metrics else [metrics]
    detail = metrics.get("transfer_detail") or {}
    parts += [detail[k] for k in sorted(detail)]
    return (record["accuracy"], tuple(p["correct"] for p in parts))


def test_every_ledger_arm_gives_the_same_answers_twice(arms):
    assert len(arms) >= 20  # every method and option set the ledger compares
    first = {json.dumps(c.to_dict(), sort_keys=True): _answers(run(c)) for c in arms}
    for config in reversed(arms):
        key = json.dumps(config.to_dict(), sort_keys=True)
        assert _answers(run(config)) == first[key], f"{config.method} {config.options}"


def test_the_record_names_its_cpu_kernels(arms):
    record = run(arms[0])
    assert record["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["versions"]["machine"]


LINEAR_PROBE_FIT = """
import hashlib, numpy as np, torch
from fewclip.methods.linear_probe import LinearProbe, fit_logistic
rng = np.random.default_rng(0)
x = rng.standard_normal((240, 256)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
y = np.repeat(np.arange(15), 16)
x += 0.3 * np.eye(15, 256, dtype=np.float32)[y]
model = fit_logistic(x, y, 1000.0, 1000, 0)
scores = LinearProbe._scores(model, torch.from_numpy(x), 15).numpy()
print(hashlib.sha256(model.coef_.tobytes() + scores.tobytes()).hexdigest())
"""


def test_the_linear_probe_gives_the_same_bits_on_one_and_two_blas_threads():
    """scikit-learn's BLAS sums in another order on two threads (the published C of one
    16-shot run moved from 31.6 to 1000 under OMP_NUM_THREADS=2): every fit and score
    runs on one BLAS thread, so the environment's thread count changes nothing."""
    import os
    import subprocess
    import sys

    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", LINEAR_PROBE_FIT], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1]
