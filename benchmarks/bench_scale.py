"""Benchmark: DualAdapter at ImageNet scale (C classes x K shots cache entries, d = 1,024).

Synthetic cached features (class means sharing a common direction, noisy images and text
columns; no model is involved), fed through the real DualAdapter. For each (C, K):

- fit: seconds per training epoch, from the fastest of ``--rounds`` timed training steps
  (DualAdapter's loss, backward and AdamW step on a batch of 256) times the steps of an
  epoch, plus one validation pass on the C x 4 val images; the process's peak memory;
- floor: every matrix product the epoch computes, on the same shapes, each timed right
  after a step (interleaved, fastest of the rounds, so that a changing load affects both
  alike): per batch the affinity products, f @ F^T with the frozen keys (N x d x M) and
  f @ S^T with the K shot sums (N x d x K; f @ F-^T follows from the two:
  :class:`fewclip.methods.kernels.residual_keys.NegativeKeyProducts`), and eight (N, d) x (d,
  C)-sized ones (the residual keys' and text classifiers' products and their gradients;
  ARL shares f @ W+), plus the validation's. ``fit / floor`` is the ratio the design
  targets (<= 2 at C = 1,000, K = 16). ``ratio-a`` is against the affinity products
  alone, a lower bound no implementation can beat. (Earlier versions of this floor also
  counted f @ F-^T, N x d x M, and before that the key-gradient products: the method
  computes neither any more.)
- search: the (beta, alpha, lam) grid search on val with the full alpha x lam grid and
  ``--betas`` of the 200 betas, extrapolated linearly to 200 (labelled), and its peak.

Then the search on ``--big-val`` (50,000, ImageNet's official val) images at the largest
(C, K), ``--big-betas`` betas: its peak memory (target < 4 GB: the search runs in chunks
of val, so memory is flat in the val size) and time per beta.

Then the feature-level peers on the same features (``--peers``; Tip-Adapter-F, APE, APE-T,
TaskRes, GDA, LP++, CLAP): each one's fit time, the median of ``--peer-repeats`` fits,
beside the matrix-product floor, one (M, d) x (d, C) product of the cached features with
the text classifier (every one of them computes at least that), timed right after each
fit. Training-free methods (APE, GDA) are timed as fitted, without APE's (beta, alpha,
gamma) search (GDA's seven-alpha loop on val is included); trained ones for one epoch
(setup, one epoch and its validation), printed with their default epochs.

``--record`` appends the figures to ``benchmarks/results/scale.csv`` (date, commit,
machine), published in ``docs/performance.md`` by ``benchmarks/write_performance.py``.

Peak memory is the process's resident high-water mark (``VmHWM``, reset before each
phase through ``/proc/self/clear_refs``; Linux only), so it includes the data and torch.

    nice -n 5 python benchmarks/bench_scale.py                 # 6 rounds, 4 betas
    python benchmarks/bench_scale.py --quick                   # C = 100 only, small
    python benchmarks/bench_scale.py --classes 1000 --shots 16 --betas 0 --big-val 0 --record
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fewclip.methods import get_method
from fewclip.methods.base import FeatureData
from fewclip.methods.dual_adapter import DualAdapter
from fewclip.methods.kernels import dual as kernels

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


#: The (N, d) x (d, C) products of one training step besides the affinities': forward
#: f @ R_k^T, f @ R_k-^T (the residual keys' share of the affinities), f @ W+, f @ W_n (the
#: text logits; ARL shares f @ W+); backward the (C, N) x (N, d) gradients of R_k, R_k-,
#: W+ and W_n. (Up to 64 classes ARL adds t_y @ W+ and two gradient products, but this
#: benchmark runs C >= 100.)
STEP_SMALL_FORWARD, STEP_SMALL_BACKWARD = 4, 4
#: ... and of the validation: f @ R_k^T, f @ R_k-^T, f @ W+, f @ W_n per chunk.
VAL_SMALL_FORWARD = 4


class Floor:
    """Random operands of the floor's products, on the shapes of one step at (C, K)."""

    def __init__(self, m: int, classes: int, rows: int, dim: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.f = torch.randn(rows, dim, generator=g)
        self.keys = torch.randn(m, dim, generator=g)
        self.slot_sums = torch.randn(m // classes, dim, generator=g)
        self.classifier = torch.randn(dim, classes, generator=g)
        self.grad = torch.randn(rows, classes, generator=g)

    def affinity_seconds(self, f: torch.Tensor | None = None) -> float:
        """The affinity products f @ F^T and f @ S^T (S: the K shot sums)."""
        f = self.f if f is None else f
        start = time.perf_counter()
        f @ self.keys.T
        f @ self.slot_sums.T
        return time.perf_counter() - start

    def small_seconds(self, forward: int, backward: int, f: torch.Tensor | None = None) -> float:
        """``forward`` products f @ W (N, d) x (d, C) and ``backward`` G^T @ f (C, N) x (N, d)."""
        f = self.f if f is None else f
        grad = self.grad[: f.shape[0]]
        start = time.perf_counter()
        for _ in range(forward):
            f @ self.classifier
        for _ in range(backward):
            grad.T @ f
        return time.perf_counter() - start


def make_step(data: FeatureData):
    """A DualAdapter training step on batch k (the method's own loss and optimiser), and
    the (training-free) fitted method, for the validation pass and the search."""
    fitted = DualAdapter(train=False, search=False)
    fitted.fit(data)
    module = fitted.module
    beta, alpha, lam = fitted.initial(data)
    optimizer = fitted.optimizer(module, data)
    loss_fn = fitted.training_loss(module, beta, alpha, lam)
    m = data.train_labels.numel()
    order = torch.randperm(m, generator=torch.Generator().manual_seed(0))

    def step(k: int) -> None:
        idx = order[(k * BATCH) % m :][:BATCH]
        loss = loss_fn(data.view(0)[idx], data.train_labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # the fit's own per-epoch validation (f_val @ F^T kept for the fit where it is small)
    frozen = kernels.FrozenValidation(module, data.val_features, (beta, alpha, lam))

    def validate() -> None:
        with torch.no_grad():
            frozen(data.val_features)

    return step, validate, fitted


def epoch_and_floor(data: FeatureData, rounds: int) -> tuple[float, float, float, DualAdapter]:
    """Seconds per epoch, its floor and the affinity products alone, timed interleaved:
    ``rounds`` times one training step then the floor's products on the same shapes; one
    validation pass then its products. The fastest of each (so that a load that changes
    during the run affects both alike), times the steps of an epoch.

    The floor is every matrix product the epoch computes: per step the affinities' (N, d)
    x (d, M) and (N, d) x (d, K) and the eight (N, d) x (d, C)-sized ones
    (:data:`STEP_SMALL_FORWARD`, :data:`STEP_SMALL_BACKWARD`), per val chunk the
    affinities' two and four small ones.
    The affinity products alone are a lower bound no implementation can beat."""
    m, dim = data.train_features.shape
    step, validate, fitted = make_step(data)
    floor = Floor(m, data.num_classes, min(BATCH, m), dim)
    step(0)  # warm-up
    floor.affinity_seconds()
    floor.small_seconds(1, 1)
    steps, affinities, smalls = [], [], []
    for k in range(rounds):
        start = time.perf_counter()
        step(k + 1)
        steps.append(time.perf_counter() - start)
        affinities.append(floor.affinity_seconds())
        smalls.append(floor.small_seconds(STEP_SMALL_FORWARD, STEP_SMALL_BACKWARD))
    start = time.perf_counter()
    validate()
    val = time.perf_counter() - start
    val_affinity = val_small = 0.0
    for chunk in data.val_features.split(fitted.module.rows()):
        val_affinity += floor.affinity_seconds(chunk)
        val_small += floor.small_seconds(VAL_SMALL_FORWARD, 0, chunk)
    per_epoch = math.ceil(m / BATCH)
    affinity = min(affinities) * per_epoch + val_affinity
    products = affinity + min(smalls) * per_epoch + val_small
    return min(steps) * per_epoch + val, products, affinity, fitted


def bench_one(classes: int, shots: int, args) -> dict:
    data = synthetic(classes, shots, 4 * classes, args.dim)
    m = classes * shots
    peak_reset()
    epoch, floor, affinity, method = epoch_and_floor(data, args.rounds)
    fit_peak = peak_gb()
    search, used, search_peak = float("nan"), 0, float("nan")
    betas, alphas, lams = method.grids(data)
    if args.betas:
        step = max(1, len(betas) // args.betas)
        method.grids = lambda d: (betas[::step][: args.betas], alphas, lams)
        used = len(method.grids(data)[0])
        peak_reset()
        start = time.perf_counter()
        method.search(data.val_features, data.val_labels, data)
        search = (time.perf_counter() - start) * len(betas) / used
        search_peak = peak_gb()
    return {
        "C": classes,
        "K": shots,
        "M": m,
        "epoch_s": epoch,
        "floor_s": floor,
        "ratio": epoch / floor,
        "affinity_s": affinity,
        "ratio_affinity": epoch / affinity,
        "fit_peak_gb": fit_peak,
        "search_s": search,
        "search_betas": used,
        "search_peak_gb": search_peak,
        "settings": len(betas) * len(alphas) * len(lams),
    }


#: The feature-level peers timed by :func:`bench_peers`: options, and the epochs a full fit
#: runs by default (on a dataset without an official config; None: training-free).
PEERS: dict[str, tuple[dict, int | None]] = {
    "tip_adapter_f": ({"search": False}, 20),
    "ape": ({"search": False}, None),
    "ape_t": ({"search": False}, 30),
    "taskres": ({}, 200),
    "gda": ({}, None),
    "lp_pp": ({}, 300),
    "clap": ({}, 300),
}


def bench_peers(classes: int, shots: int, args) -> list[dict]:
    """Each peer's fit (median of ``--peer-repeats``; trained ones for one epoch) and the
    floor, one (M, d) x (d, C) product, timed right after each fit (fastest)."""
    data = synthetic(classes, shots, 4 * classes, args.dim)
    text = data.classifiers["positive"]
    rows = []
    for name in args.peers:
        options, epochs = PEERS[name]
        if epochs is not None:
            options = {**options, "epochs": 1}
        fits, floors = [], []
        for _ in range(args.peer_repeats):
            method = get_method(name, **options)
            start = time.perf_counter()
            method.fit(data, seed=1)
            fits.append(time.perf_counter() - start)
            start = time.perf_counter()
            data.train_features @ text
            floors.append(time.perf_counter() - start)
        fit, floor = statistics.median(fits), min(floors)
        rows.append(
            {
                "method": name,
                "C": classes,
                "K": shots,
                "fit_s": fit,
                "floor_s": floor,
                "ratio": fit / floor,
                "epochs": epochs,
            }
        )
    return rows


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


def dual_rows(r: dict) -> list[dict]:
    """One benchmark row as results CSV rows (``results_csv.append_rows``)."""
    setting = f"DualAdapter, C = {r['C']:,}, K = {r['K']}, M = {r['M']:,}"
    rows = [
        {"setting": setting, "metric": "epoch", "value": f"{r['epoch_s']:.2f} s"},
        {"setting": setting, "metric": "floor", "value": f"{r['floor_s']:.2f} s"},
        {"setting": setting, "metric": "ratio", "value": f"{r['ratio']:.2f}x"},
    ]
    if math.isfinite(r["search_s"]):
        value = f"{r['search_s']:.0f} s"
        rows.append({"setting": setting, "metric": "search (200 x 40 x 20)", "value": value})
    return rows


def peer_rows(r: dict) -> list[dict]:
    what = "" if r["epochs"] is None else f" (1 epoch of {r['epochs']})"
    setting = f"{r['method']}{what}, C = {r['C']:,}, K = {r['K']}"
    return [
        {"setting": setting, "metric": "fit", "value": f"{r['fit_s']:.2f} s"},
        {"setting": setting, "metric": "floor", "value": f"{r['floor_s']:.2f} s"},
        {"setting": setting, "metric": "ratio", "value": f"{r['ratio']:.1f}x"},
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--rounds", type=int, default=6, help="training steps timed (each beside its floor)"
    )
    parser.add_argument(
        "--betas", type=int, default=4, help="betas of the 200 searched (0: no search)"
    )
    parser.add_argument("--big-val", type=int, default=50_000, help="0: skip")
    parser.add_argument("--big-betas", type=int, default=1)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-dual", action="store_true", help="time the peers only")
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=sorted(PEERS),
        default=list(PEERS),
        help="peers timed at the largest (C, K) (none: skip)",
    )
    parser.add_argument("--peer-repeats", type=int, default=3, help="fits per peer (median)")
    parser.add_argument("--record", action="store_true", help="append to results/scale.csv")
    parser.add_argument("--quick", action="store_true", help="C = 100, 1 epoch, no big val")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.rounds, args.betas, args.big_val = [100], 3, 2, 0
        args.peer_repeats = 1
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"torch {torch.__version__}, d = {args.dim}, synthetic features (no model)"
    )
    DualAdapter(epochs=1, search=False).fit(synthetic(10, 2, 40, args.dim))  # warm-up
    results: dict[str, list[dict]] = {"dual": [], "peers": []}
    if not args.no_dual:
        print(
            f"{'C':>5} {'K':>3} {'M':>6} {'epoch s':>8} {'floor s':>8} {'ratio':>6} "
            f"{'aff s':>7} {'ratio-a':>7} {'fit GB':>7} {'search s*':>9} {'search GB':>9}"
        )
        for classes in args.classes:
            for shots in args.shots:
                r = bench_one(classes, shots, args)
                results["dual"].append(r)
                print(
                    f"{r['C']:>5} {r['K']:>3} {r['M']:>6} {r['epoch_s']:>8.2f} "
                    f"{r['floor_s']:>8.2f} {r['ratio']:>6.2f} {r['affinity_s']:>7.2f} "
                    f"{r['ratio_affinity']:>7.2f} {r['fit_peak_gb']:>7.2f} "
                    f"{r['search_s']:>9.1f} {r['search_peak_gb']:>9.2f}",
                    flush=True,
                )
        print(
            f"epoch s: the fastest of {args.rounds} training steps x the steps of an epoch + "
            "one val pass; floor s: the same for every matrix product the epoch computes (the "
            "affinities' and the (N, d) x (d, C)-sized ones), each timed right after its "
            "step; aff s / ratio-a: the affinity products f @ F^T, f @ S^T alone"
        )
        print(
            f"* search: {args.betas} of the 200 betas timed (x the full alpha x lam grid), "
            "extrapolated to 200; peaks are the process's resident high-water mark"
        )
    if args.peers:
        classes, shots = max(args.classes), max(args.shots)
        for name in PEERS:  # warm-up: one-off first-call costs are not per-fit costs
            if name in args.peers:
                options, epochs = PEERS[name]
                options = options if epochs is None else {**options, "epochs": 1}
                get_method(name, **options).fit(synthetic(10, 2, 40, args.dim))
        print(f"\npeers at C = {classes:,}, K = {shots} (median of {args.peer_repeats} fits)")
        print(f"{'method':<15}{'fit s':>8}{'floor s':>9}{'ratio':>8}  fit")
        for r in bench_peers(classes, shots, args):
            results["peers"].append(r)
            what = "as fitted" if r["epochs"] is None else f"1 epoch of {r['epochs']}"
            print(
                f"{r['method']:<15}{r['fit_s']:>8.2f}{r['floor_s']:>9.3f}"
                f"{r['ratio']:>7.1f}x  {what}",
                flush=True,
            )
        print(
            "floor: one (M, d) x (d, C) product, the cached features with the text "
            "classifier (fastest, timed after each fit); APE without its (beta, alpha, "
            "gamma) search, Tip-Adapter-F and APE-T without theirs; GDA with its alpha loop"
        )
    if args.big_val and not args.no_dual:
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
    if args.record:
        from results_csv import append_rows

        rows = [row for r in results["dual"] for row in dual_rows(r)]
        rows += [row for r in results["peers"] for row in peer_rows(r)]
        note = "python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:])
        print(
            "appended to",
            append_rows("scale", rows, model=f"synthetic features, d = {args.dim:,}", note=note),
        )
    return results


if __name__ == "__main__":
    main()
