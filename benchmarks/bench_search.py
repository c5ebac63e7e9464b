"""Benchmark: DualAdapter's (beta, alpha, lam) grid search, vectorised versus nested loops.

Random features with a class structure (class means + noise; noisy text classifiers),
fed through the real DualAdapter forward (training-free, so the residuals are zero), then
the official grid of the generic DualAdapter settings (beta 200 x alpha 40 x lam 20)
searched three ways on the same val features:

- nested loop: the official loops, with the beta-only components computed once per beta
  (the official code recomputes its whole forward at every setting: ``--official`` times
  that too, on the first beta only, and extrapolates);
- vectorised: :func:`fewclip.methods.search.grid_search` with candidate pruning;
- vectorised without pruning.

All three must choose the same setting (the script exits with status 1 otherwise). The
time of the components alone (shared by every variant) is reported separately.

    python benchmarks/bench_search.py --quick
    python benchmarks/bench_search.py                  # Caltech-like, then ImageNet-like
    python benchmarks/bench_search.py --threads 2

The ImageNet-like setting (1000 classes, 4 val images per class) runs a few betas only
(``--imagenet-betas``): one full grid through the nested loop takes about an hour on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from fewclip.methods.base import FeatureData
from fewclip.methods.dual_adapter import DualAdapter
from fewclip.methods.search import grid_search, grid_search_loop


def random_data(
    classes: int, shots: int, val_per_class: int, dim: int, noise: float, seed: int = 0
) -> FeatureData:
    """Cached features with a class structure, about as hard as a real dataset.

    Class means share a common direction (pairwise cosine about 0.67, as CLIP features
    are far from orthogonal); images and text columns are noisy copies of them. The
    settings below put a nearest-class-mean classifier on the few-shot features at about
    80% (Caltech-like) and 60% (ImageNet-like) on val, zero-shot at about 20%.
    """
    g = torch.Generator().manual_seed(seed)
    spread = 0.7
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    means = F.normalize(common + spread * torch.randn(classes, dim, generator=g) / dim**0.5, dim=-1)

    def noisy(rows: torch.Tensor, noise: float) -> torch.Tensor:
        jitter = noise * spread * torch.randn(rows.shape, generator=g) / dim**0.5
        return F.normalize(rows + jitter, dim=-1)

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        return noisy(means[labels], noise), labels

    train, train_labels = sample(shots)
    views = torch.stack([noisy(train, 1.0) for _ in range(2)])
    val, val_labels = sample(val_per_class)
    classifiers = {
        "positive": noisy(means, 2.5).T.contiguous(),
        "description": noisy(means, 2.5).T.contiguous(),
        "negative": noisy(-means, 3.0).T.contiguous(),
    }
    return FeatureData(
        train_features=train,
        train_labels=train_labels,
        train_views=views,
        val_features=val,
        val_labels=val_labels,
        classifiers=classifiers,
        logit_scale=30.0,
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench(name: str, data: FeatureData, num_betas: int | None, official: bool) -> bool:
    method = DualAdapter(train=False, search=False)
    method.fit(data)
    module = method.module
    betas, alphas, lams = method.grids(data)
    betas = betas[:num_betas] if num_betas else betas
    with torch.no_grad():
        terms = module.terms(data.val_features)
        components = lambda beta: module.components(terms, beta)
        labels = data.val_labels
        args = (components, module.combine, labels, betas, alphas, lams)
        _, t_components = timed(lambda: [components(b) for b in betas])
        loop, t_loop = timed(lambda: grid_search_loop(*args))
        fast, t_fast = timed(lambda: grid_search(*args))
        plain, t_plain = timed(lambda: grid_search(*args, prune=False))
        t_official = None
        if official:
            _, t_one = timed(
                lambda: grid_search_loop(*args[:3], betas[:1], alphas, lams, recompute=True)
            )
            t_official = t_one * len(betas)
    n, c = data.val_features.shape[0], data.num_classes
    grid = len(betas) * len(alphas) * len(lams)
    print(
        f"\n== {name}: C={c}, val N={n}, M={data.train_labels.numel()}, d={data.dim}, "
        f"grid {len(betas)} x {len(alphas)} x {len(lams)} = {grid:,} settings"
    )
    print(f"components alone (every variant pays this): {t_components:8.2f} s")
    print(f"nested loop (components once per beta):     {t_loop:8.2f} s")
    if t_official is not None:
        print(
            f"nested loop, full forward per setting (official, extrapolated): {t_official:8.1f} s"
        )
    for label, seconds in (("vectorised, pruned:", t_fast), ("vectorised, no pruning:", t_plain)):
        search_only = (t_loop - t_components) / max(seconds - t_components, 1e-9)
        print(
            f"{label:44s} {seconds:8.2f} s   ratio {t_loop / seconds:6.1f}x "
            f"({search_only:.1f}x without the components)"
        )
    for label, r in (("loop", loop), ("vectorised", fast), ("no pruning", plain)):
        print(
            f"  {label:11s} beta={r.beta:.4f} alpha={r.alpha:.4f} lam={r.lam:.4f} "
            f"index={r.index} val acc={r.accuracy:.2f}"
        )
    same = loop == fast == plain
    print("same setting:", same)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings, a few seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--imagenet-betas", type=int, default=3)
    parser.add_argument("--skip-imagenet", action="store_true")
    parser.add_argument("--official", action="store_true", help="also time the official loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    ok = True
    if args.quick:
        ok &= bench(
            "quick (Caltech-like, 10 betas)",
            random_data(100, 4, 4, 256, noise=3.0),
            10,
            args.official,
        )
    else:
        ok &= bench("Caltech-like", random_data(100, 16, 4, 1024, noise=4.5), None, args.official)
        if not args.skip_imagenet:
            ok &= bench(
                f"ImageNet-like, first {args.imagenet_betas} betas",
                random_data(1000, 4, 4, 1024, noise=3.2),
                args.imagenet_betas,
                args.official,
            )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
