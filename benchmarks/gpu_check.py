"""GPU check: every method once on the device (CUDA by default) against the same run on CPU.

    python benchmarks/gpu_check.py                           # cuda: tiny models + RN50 + ViT-B-16
    python benchmarks/gpu_check.py --device cpu --archs fewclip-test-rn   # a dry run here

For each architecture (random weights, init seed 0: the numbers are NOT meaningful, only
their agreement is) it first compares the image and text features of a batch encoded on
CPU in fp32 and on the device under its default precision (fp16 autocast on CUDA), then
runs every method for one short fit (1-2 epochs, 2 shots) on a small generated image folder
on CPU and on the device, and prints per method: the fit time on each, both accuracies and
their difference. Training-free methods must agree within ``--tolerance`` accuracy points
(fp16 moves a few borderline test images at most); methods that train are reported, and
flagged only beyond ``--train-tolerance`` (fp16 rounding changes their trajectory). Exits
1 when a check fails. ``--json`` writes every number.

Not yet run on a GPU: written and tested with ``--device cpu`` (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fewclip.backbones import load_backbone
from fewclip.config import RunConfig
from fewclip.methods import METHODS
from fewclip.prompting.toy import coloured_squares
from fewclip.runner import run

ARCHS = ("fewclip-test-rn", "fewclip-test-vit", "RN50", "ViT-B-16")
VIT_ONLY = ("apex", "maple", "promptsrc")
#: Options for ResNets: CLIP-LoRA adapts their text encoder only (as its official code).
RESNET_OPTIONS = {"clip_lora": {"encoder": "text"}}
TRAINING_FREE = ("zero_shot", "tip_adapter", "linear_probe")
FAST = {
    "zero_shot": {},
    "linear_probe": {"refine_steps": 0},
    "clip_adapter": {"epochs": 2},
    "tip_adapter": {},
    "tip_adapter_f": {"epochs": 2},
    "dual_adapter": {"epochs": 2},
    "coop": {"epochs": 1, "n_ctx": 2},
    "cocoop": {"epochs": 1, "batch_size": 4},
    "apex": {"epochs": 1},
    "tomm": {"epochs": 1, "batch_size": 4},
    "kgcoop": {"epochs": 1, "batch_size": 4},
    "prograd": {"epochs": 1, "n_ctx": 8},
    "proda": {"epochs": 1, "n_prompts": 4, "n_ctx": 2},
    "maple": {"epochs": 1, "batch_size": 4},
    "promptsrc": {"epochs": 1, "batch_size": 4},
    "clip_lora": {"iterations": 4, "batch_size": 4},
}


def feature_agreement(arch: str, device: str) -> dict[str, float]:
    """Max |difference| of normalised image and text features, CPU fp32 vs ``device``."""
    cpu = load_backbone(arch, None, device="cpu")
    dev = load_backbone(arch, None, device=device)
    images = torch.rand(
        4, 3, cpu.image_size, cpu.image_size, generator=torch.Generator().manual_seed(0)
    )
    texts = ["a photo of a cat.", "a centered satellite photo of a river."]
    return {
        "image_max_abs_diff": float(
            (cpu.encode_images(images) - dev.encode_images(images).cpu()).abs().max()
        ),
        "text_max_abs_diff": float(
            (cpu.encode_text(texts) - dev.encode_text(texts).cpu()).abs().max()
        ),
        "precision": dev.precision,
    }


def one_run(arch: str, method: str, device: str, data: Path, cache: Path) -> dict:
    config = RunConfig(
        method=method,
        dataset="folder:squares",
        backbone=arch,
        pretrained=None,
        shots=0 if method == "zero_shot" else 2,
        options={
            **FAST.get(method, {}),
            **(RESNET_OPTIONS.get(method, {}) if "vit" not in arch.lower() else {}),
        },
        augment_views=1,
        data_root=str(data),
        cache_dir=str(cache),
        device=device,
        progress=False,
    )
    start = time.perf_counter()
    record = run(config)
    return {
        "accuracy": record["accuracy"],
        "fit_seconds": record.get("fit_seconds"),
        "total_seconds": time.perf_counter() - start,
        "test_images": record["metrics"].get("test_images"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="the device checked against CPU")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument(
        "--tolerance", type=float, default=5.0, help="accuracy points, training-free"
    )
    parser.add_argument(
        "--train-tolerance", type=float, default=25.0, help="accuracy points, trained"
    )
    parser.add_argument("--feature-tolerance", type=float, default=2e-2, help="max |feature diff|")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available here; use --device cpu for a dry run", file=sys.stderr
        )
        return 1
    failures = []
    results: dict = {"device": args.device, "archs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        coloured_squares(data / "squares", num_classes=4, per_class=10, seed=0)
        print(f"gpu_check: {args.device} against cpu; random weights (numbers NOT meaningful)")
        for arch in args.archs:
            agree = feature_agreement(arch, args.device)
            ok = (
                max(agree["image_max_abs_diff"], agree["text_max_abs_diff"])
                <= args.feature_tolerance
            )
            if not ok:
                failures.append(f"{arch}: features differ by more than {args.feature_tolerance}")
            print(
                f"\n{arch}: features on {args.device} ({agree['precision']}) vs cpu fp32: "
                f"image {agree['image_max_abs_diff']:.2e}, text {agree['text_max_abs_diff']:.2e} "
                f"[{'ok' if ok else 'FAIL'}]"
            )
            head = ("method", "fit cpu s", "fit dev s", "acc cpu", "acc dev", "diff")
            print("  " + f"{head[0]:14s} " + " ".join(f"{h:>9s}" for h in head[1:]))
            rows = {}
            for method in args.methods:
                if method in VIT_ONLY and "vit" not in arch.lower():
                    continue
                cpu = one_run(arch, method, "cpu", data, Path(tmp) / "cache-cpu")
                dev = one_run(arch, method, args.device, data, Path(tmp) / f"cache-{args.device}")
                diff = abs(cpu["accuracy"] - dev["accuracy"])
                free = method in TRAINING_FREE
                limit = args.tolerance if free else args.train_tolerance
                status = "ok" if diff <= limit else "FAIL"
                if status == "FAIL":
                    failures.append(f"{arch}/{method}: accuracy differs by {diff:.1f} > {limit}")
                rows[method] = {"cpu": cpu, "device": dev, "diff": diff, "status": status}

                def seconds(r: dict) -> str:
                    return f"{r['fit_seconds']:.2f}" if r["fit_seconds"] is not None else "-"

                print(
                    f"  {method:14s} {seconds(cpu):>9s} {seconds(dev):>9s} "
                    f"{cpu['accuracy']:8.2f} {dev['accuracy']:8.2f} {diff:6.2f} [{status}]"
                )
            results["archs"][arch] = {"features": agree, "methods": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(
        "\n"
        + (
            "gpu_check: all checks passed"
            if not failures
            else "gpu_check: FAILED\n  " + "\n  ".join(failures)
        )
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
