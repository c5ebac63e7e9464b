"""Benchmark: one pretraining step in the contiguous and the channels-last memory layout.

``python -m fewclip.pretrain --channels-last`` (and ``fewclip.pretrain.recipe
--channels-last``) holds the model and each batch of images channels-last: the same
computation up to float rounding (``tests/test_pretrain.py``), and faster convolutions on
CPU. Each side runs :func:`fewclip.pretrain.train.train_step`, the step of
:func:`fewclip.pretrain.train.pretrain` (forward of a batch of random images and captions,
CLIP loss, backward, AdamW, the temperature's clamp) on the same model and batch, in one
process, alternating A B / B A over ``--pairs`` pairs of ``--steps`` steps each after an
untimed warm-up. Printed: the median seconds a step of each side
(the contiguous layout is the floor it is measured against) and the median pair ratio.

    python benchmarks/bench_pretrain_layout.py --arch tiny-emoji-rn --threads 2
    python benchmarks/bench_pretrain_layout.py --arch tiny-emoji-vit --record
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewclip.backbones import open_clip
from fewclip.pretrain.train import train_step


def make_side(arch: str, layout: torch.memory_format, batch: int):
    """A step function of one side: its own model and optimiser, the shared batch."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).to(memory_format=layout)
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=layout)
    captions = [f"a drawing of emoji number {i}" for i in range(batch)]
    texts = open_clip.get_tokenizer(arch)(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = open_clip.ClipLoss()

    def step() -> None:
        train_step(model, optimizer, images, texts, captions, loss_fn)

    return step


def seconds_per_step(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="tiny-emoji-rn")
    p.add_argument("--batch", type=int, default=256, help="the recipes' batch size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="steps per side and pair")
    p.add_argument("--record", action="store_true", help="append to results/pretrain.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sides = {
        "contiguous": make_side(args.arch, torch.contiguous_format, args.batch),
        "channels-last": make_side(args.arch, torch.channels_last, args.batch),
    }
    for step in sides.values():  # warm-up: one-off first-call costs
        step()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for pair in range(args.pairs):
        order = list(sides) if pair % 2 == 0 else list(sides)[::-1]
        for name in order:
            times[name].append(seconds_per_step(sides[name], args.steps))
    plain = statistics.median(times["contiguous"])
    fast = statistics.median(times["channels-last"])
    pairs = zip(times["contiguous"], times["channels-last"], strict=True)
    ratio = statistics.median(a / b for a, b in pairs)
    setting = f"{args.arch} pretraining step, batch {args.batch}, {args.threads} thread(s)"
    print(setting)
    print(f"contiguous (floor) {plain:.3f} s/step, channels-last {fast:.3f} s/step")
    print(f"speed-up (median pair ratio, contiguous / channels-last): {ratio:.2f}x")
    if args.record:
        from results_csv import append_rows

        command = (
            f"python benchmarks/bench_pretrain_layout.py --arch {args.arch} "
            f"--threads {args.threads}"
        )
        append_rows(
            "pretrain",
            model=f"{args.arch} (random init; the step's cost does not depend on the weights)",
            rows=[
                {"setting": setting, "metric": "contiguous s/step", "value": f"{plain:.3f}"},
                {"setting": setting, "metric": "channels-last s/step", "value": f"{fast:.3f}"},
                {
                    "setting": setting,
                    "metric": "speed-up",
                    "value": f"{ratio:.2f}x",
                    "note": command,
                },
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
