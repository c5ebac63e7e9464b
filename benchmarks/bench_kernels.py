"""Benchmark: what each DualAdapter kernel saves, side by side in one run.

At ImageNet's scale (C = 1,000 classes, K = 16 shots, d = 1,024; synthetic features, no
model) one training step (batch 256) and one validation pass (``--val`` images) are timed
for each variant, the variants alternating round by round so that a changing load affects
all alike; printed: the median and the range over ``--rounds`` rounds, and the epoch time
(steps per epoch x step + validation) relative to the fast path.

Variants: ``fast`` (the default path), ``plain`` (``fast=False``: the paper's formulas),
and the fast path with one kernel replaced by its plain formula: ``-arl`` (ARL through
``torch.cdist`` and autograd). (Commit 6754fc0 also had ``-classifier``, the written-out
gradient of W+ and W-, since removed.) A kernel earns its place when removing it costs
more than 10% of the epoch (docs/design/dual_adapter_kernels.md).

    python benchmarks/bench_kernels.py                      # C = 1,000, K = 16
    python benchmarks/bench_kernels.py --classes 100 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from bench_scale import BATCH, synthetic

from fewclip.methods import dual_adapter
from fewclip.methods.dual_adapter import DualAdapter
from fewclip.methods.kernels import dual as kernels

VARIANTS = ("fast", "plain", "-arl")


def plain_arl(features, prototypes, labels, scale=4.0, k=3, dots=None):
    return dual_adapter.adaptive_reranking_loss(features, prototypes, labels, scale, k)


def make(variant: str, data):
    """(step, validate) of a training-free-initialised DualAdapter under ``variant``."""
    method = DualAdapter(train=False, search=False, fast=variant != "plain")
    method.fit(data)
    module = method.module
    beta, alpha, lam = method.initial(data)
    optimizer = method.optimizer(module, data)
    loss_fn = method.training_loss(module, beta, alpha, lam)
    m = data.train_labels.numel()
    order = torch.randperm(m, generator=torch.Generator().manual_seed(0))
    patches = {"-arl": ("reranking_loss", plain_arl)}

    def patched(fn):
        def run(*args):
            if variant not in patches:
                return fn(*args)
            name, replacement = patches[variant]
            original = getattr(kernels, name)
            setattr(kernels, name, replacement)
            try:
                return fn(*args)
            finally:
                setattr(kernels, name, original)

        return run

    @patched
    def step(k: int) -> None:
        idx = order[(k * BATCH) % m :][:BATCH]
        loss = loss_fn(data.view(0)[idx], data.train_labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @patched
    def validate() -> None:
        with torch.no_grad():
            module.chunked(data.val_features, beta, alpha, lam)

    return step, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic(args.classes, args.shots, args.val, args.dim)
    runs = {v: make(v, data) for v in args.variants}
    times = {v: ([], []) for v in args.variants}
    for step, validate in runs.values():  # warm-up
        step(0)
        validate()
    for r in range(args.rounds):
        for v, (step, validate) in runs.items():
            start = time.perf_counter()
            step(r + 1)
            middle = time.perf_counter()
            validate()
            times[v][0].append(middle - start)
            times[v][1].append(time.perf_counter() - middle)
            print(
                f"round {r} {v}: step {times[v][0][-1]:.3f} s, val {times[v][1][-1]:.3f} s",
                flush=True,
            )
    steps = math.ceil(data.train_labels.numel() / BATCH)
    epoch = {v: steps * statistics.median(s) + statistics.median(t) for v, (s, t) in times.items()}
    print(
        f"C = {args.classes}, K = {args.shots}, d = {args.dim}, val {args.val}, "
        f"{args.threads} thread(s), {args.rounds} alternating rounds; torch {torch.__version__}"
    )
    base = epoch[args.variants[0]]
    for v, (s, t) in times.items():
        print(
            f"{v:<12} step {1000 * statistics.median(s):8.1f} ms [{1000 * min(s):.1f}, "
            f"{1000 * max(s):.1f}]  val {1000 * statistics.median(t):8.1f} ms "
            f"[{1000 * min(t):.1f}, {1000 * max(t):.1f}]  epoch {epoch[v]:7.2f} s "
            f"({epoch[v] / base:.2f}x {args.variants[0]})"
        )


if __name__ == "__main__":
    main()
