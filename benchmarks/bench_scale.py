"""Benchmark: DualAdapter at ImageNet scale (C classes x K shots cache entries, d = 1,024).

Synthetic cached features (class means sharing a common direction, noisy images and text
columns; no model is involved), fed through the real DualAdapter. For each (C, K):

- fit: seconds per training epoch (``search=False``; every epoch includes its validation
  on the C x 4 val images), and the process's peak memory while fitting;
- floor: the matrix products one epoch cannot avoid, timed side by side in the same run
  on the same shapes: per batch of 256 the two affinity products f @ K^T (positive and
  negative keys) and the two key-gradient products, plus the two affinity products of the
  validation; ``fit / floor`` is the ratio the issue targets (<= 2 at C = 1,000, K = 16);
- search: the (beta, alpha, lam) grid search on val with the full alpha x lam grid and
  ``--betas`` of the 200 betas, extrapolated linearly to 200 (labelled), and its peak.

Then the search on ``--big-val`` (50,000, ImageNet's official val) images at the largest
(C, K), ``--big-betas`` betas: its peak memory (target < 4 GB: the search runs in chunks
of val, so memory is flat in the val size) and time per beta.

Peak memory is the process's resident high-water mark (``VmHWM``, reset before each
phase through ``/proc/self/clear_refs``; Linux only), so it includes the data and torch.

    nice -n 5 python benchmarks/bench_scale.py                 # 2 epochs, 4 betas
    python benchmarks/bench_scale.py --quick                   # C = 100 only, small
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import time

import torch
import torch.nn.functional as F

from fewclip.methods.base import FeatureData
from fewclip.methods.dual_adapter import (
    DualAdapter,
    adaptive_reranking_loss,
    consistency_loss,
)

DIM = 1024
BATCH = 256


def peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 2**20
    except (OSError, AttributeError):
        return float("nan")


def synthetic(classes: int, shots: int, val: int, dim: int, seed: int = 0) -> FeatureData:
    """Cached features with a class structure (random, no model): one view."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(1, dim, generator=g)
    means = F.normalize(torch.randn(classes, dim, generator=g) + 1.4 * common, dim=-1)

    def sample(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(labels), dim, generator=g) * (1.5 / dim**0.5)
        return F.normalize(means[labels] + noise, dim=-1)

    train_labels = torch.arange(classes).repeat_interleave(shots)
    val_labels = torch.arange(val) % classes
    train = sample(train_labels)

    def text() -> torch.Tensor:
        noise = torch.randn(classes, dim, generator=g) * (3.0 / dim**0.5)
        return F.normalize(means + noise, dim=-1).T.contiguous()

    return FeatureData(
        train_features=train,
        train_labels=train_labels,
        train_views=train[None],
        val_features=sample(val_labels),
        val_labels=val_labels,
        classifiers={"positive": text(), "description": text(), "negative": text()},
        logit_scale=100.0,
    )


def timed(fn, repeat: int = 2) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def floor_seconds(m: int, n_val: int, dim: int) -> float:
    """The matrix products of one epoch (see the module doc), timed on their shapes."""
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(m, dim, generator=g)
    steps, last = divmod(m, BATCH)
    total = 0.0
    for rows, count in ((BATCH, steps), (last, 1 if last else 0)):
        if not count:
            continue
        f = torch.randn(rows, dim, generator=g)
        grad = torch.randn(rows, m, generator=g)
        forward = timed(lambda f=f: f @ keys.T)
        backward = timed(lambda f=f, grad=grad: grad.T @ f)
        total += count * 2 * (forward + backward)  # positive and negative keys
    val = torch.randn(min(n_val, 4096), dim, generator=g)
    total += 2 * timed(lambda: val @ keys.T, repeat=1) * n_val / val.shape[0]
    return total


def epoch_from_steps(data: FeatureData, steps: int) -> tuple[float, DualAdapter]:
    """Seconds per epoch from ``steps`` timed training steps (DualAdapter's loss, AdamW
    step) times the steps of an epoch, plus one timed validation pass (``--steps``); also
    returns the (training-free) fitted method, for the search."""
    fitted = DualAdapter(train=False, search=False)
    fitted.fit(data)
    module = fitted.module
    beta, alpha, lam = fitted.initial(data)
    optimizer = torch.optim.AdamW(
        [
            {"params": module.positive_parameters(), "lr": 1e-4},
            {"params": module.negative_parameters(), "lr": 5e-4},
        ],
        weight_decay=0.1,
        eps=1e-3,
    )
    m = data.train_labels.numel()
    order = torch.randperm(m, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for k in range(steps):
        idx = order[(k * BATCH) % m :][:BATCH]
        f, y = data.view(0)[idx], data.train_labels[idx]
        w_plus = module.positive_classifier()
        loss = F.cross_entropy(module(f, beta, alpha, lam), y)
        loss = loss + adaptive_reranking_loss(f, w_plus.T, y)
        loss = loss + 8.0 * consistency_loss(w_plus, module.w_t, module.w_d)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    with torch.no_grad():
        module.chunked(data.val_features, beta, alpha, lam)
    return per_step * math.ceil(m / BATCH) + time.perf_counter() - start, fitted


def bench_one(classes: int, shots: int, args) -> dict:
    data = synthetic(classes, shots, 4 * classes, args.dim)
    m, n_val = classes * shots, 4 * classes
    floor = floor_seconds(m, n_val, args.dim)

    method = DualAdapter(epochs=args.epochs, search=False)
    peak_reset()
    if args.steps:
        epoch, method = epoch_from_steps(data, args.steps)
    else:
        start = time.perf_counter()
        method.fit(data)
        epoch = (time.perf_counter() - start) / args.epochs
    fit_peak = peak_gb()

    betas, alphas, lams = method.grids(data)
    step = max(1, len(betas) // args.betas)
    method.grids = lambda d: (betas[::step][: args.betas], alphas, lams)
    used = len(method.grids(data)[0])
    peak_reset()
    start = time.perf_counter()
    method.search(data.val_features, data.val_labels, data)
    search = (time.perf_counter() - start) * len(betas) / used
    return {
        "C": classes,
        "K": shots,
        "M": m,
        "epoch_s": epoch,
        "floor_s": floor,
        "ratio": epoch / floor,
        "fit_peak_gb": fit_peak,
        "search_s": search,
        "search_betas": used,
        "search_peak_gb": peak_gb(),
        "settings": len(betas) * len(alphas) * len(lams),
    }


def bench_big_val(classes: int, shots: int, args) -> dict:
    data = synthetic(classes, shots, args.big_val, args.dim, seed=2)
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    betas, alphas, lams = method.grids(data)
    method.grids = lambda d: (betas[: args.big_betas], alphas, lams)
    peak_reset()
    start = time.perf_counter()
    method.search(data.val_features, data.val_labels, data)
    seconds = time.perf_counter() - start
    return {"val": args.big_val, "seconds_per_beta": seconds / args.big_betas, "peak_gb": peak_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs timed")
    parser.add_argument(
        "--steps", type=int, default=0, help="time this many steps, not whole epochs"
    )
    parser.add_argument("--betas", type=int, default=4, help="betas of the 200 searched")
    parser.add_argument("--big-val", type=int, default=50_000, help="0: skip")
    parser.add_argument("--big-betas", type=int, default=1)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="C = 100, 1 epoch, no big val")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.epochs, args.betas, args.big_val = [100], 1, 2, 0
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"torch {torch.__version__}, d = {args.dim}, synthetic features (no model)"
    )
    DualAdapter(epochs=1, search=False).fit(synthetic(10, 2, 40, args.dim))  # warm-up
    header = (
        f"{'C':>5} {'K':>3} {'M':>6} {'epoch s':>8} {'floor s':>8} {'ratio':>6} "
        f"{'fit GB':>7} {'search s*':>9} {'search GB':>9}"
    )
    print(header)
    for classes in args.classes:
        for shots in args.shots:
            r = bench_one(classes, shots, args)
            print(
                f"{r['C']:>5} {r['K']:>3} {r['M']:>6} {r['epoch_s']:>8.2f} {r['floor_s']:>8.2f} "
                f"{r['ratio']:>6.2f} {r['fit_peak_gb']:>7.2f} {r['search_s']:>9.1f} "
                f"{r['search_peak_gb']:>9.2f}",
                flush=True,
            )
    if args.steps:
        print(f"epoch s: {args.steps} training steps timed x the steps of an epoch + one val pass")
    print(
        f"* search: {args.betas} of the 200 betas timed (x the full alpha x lam grid), "
        "extrapolated to 200; peaks are the process's resident high-water mark"
    )
    if args.big_val:
        classes, shots = max(args.classes), max(args.shots)
        r = bench_big_val(classes, shots, args)
        hours = r["seconds_per_beta"] * 200 / 3600
        print(
            f"search on {r['val']:,} val images, C = {classes}, K = {shots}: peak "
            f"{r['peak_gb']:.2f} GB, {r['seconds_per_beta']:.0f} s per beta "
            f"({args.big_betas} timed; the 200-beta grid extrapolates to {hours:.1f} h)"
        )
    if not math.isfinite(peak_gb()):
        print("(peak memory unavailable: needs Linux /proc)")


if __name__ == "__main__":
    main()
