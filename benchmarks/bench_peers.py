"""Benchmark: fit time of the training-free peers (GDA, APE) at ImageNet scale.

Synthetic cached features (C classes x K shots, V augmented views, d = 1,024, C x 4 val
images; no model is involved), fed through the real methods on one thread, timed in CPU
seconds of the process:

- GDA: class means, the shrunk covariance of the V C K samples, its pseudo-inverse, the
  classifier, and the alpha search on val (7 values);
- APE: the channel criterion and the refined cache, without the search, and the search
  time per beta (all 20 alphas x 20 gammas at that beta), extrapolated to the official
  200 betas (labelled);
- the floor: the matrix products GDA and APE cannot avoid (GDA: the covariance
  (V C K) x d x d; APE: the val-key affinities (N x d x M)).

    OMP_NUM_THREADS=1 python benchmarks/bench_peers.py            # C = 1,000, K = 16
    OMP_NUM_THREADS=1 python benchmarks/bench_peers.py --classes 100
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fewclip.methods import get_method
from fewclip.methods.base import FeatureData

DIM = 1024


def synthetic(classes: int, shots: int, views: int, seed: int = 0) -> FeatureData:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(classes, DIM, generator=g), dim=-1)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(classes).repeat_interleave(per_class)
        x = means[y] + 2.0 * torch.randn(len(y), DIM, generator=g) / DIM**0.5
        return F.normalize(x, dim=-1), y

    train, labels = draw(shots)
    noise = 0.6 * torch.randn(views, *train.shape, generator=g) / DIM**0.5
    val, val_labels = draw(4)
    text = F.normalize(means + 4.0 * torch.randn(classes, DIM, generator=g) / DIM**0.5, dim=-1)
    return FeatureData(
        train_features=train,
        train_labels=labels,
        train_views=F.normalize(train[None] + noise, dim=-1),
        val_features=val,
        val_labels=val_labels,
        classifiers={"positive": text.T.contiguous()},
        logit_scale=100.0,
    )


def seconds(fn, rounds: int) -> float:
    """The fewest CPU seconds of ``rounds`` calls (process time: on one thread, the work
    done, unaffected by other processes sharing the machine)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = synthetic(args.classes, args.shots, args.views)
    c = args.classes
    n_val = data.val_labels.numel()
    samples = data.train_views.reshape(-1, DIM)
    print(f"C = {c}, K = {args.shots}, V = {args.views}, d = {DIM}, val = {n_val}, 1 thread, CPU s")

    gda = seconds(lambda: get_method("gda").fit(data), args.rounds)
    floor = seconds(lambda: samples.T @ samples, args.rounds)
    print(f"gda fit (with its 7-value alpha search): {gda:.2f} s; floor (covariance) {floor:.2f} s")

    ape_fit = seconds(lambda: get_method("ape", search=False).fit(data), args.rounds)
    keys = data.cache_keys
    floor = seconds(lambda: data.val_features @ keys.T, args.rounds)
    print(f"ape fit without search: {ape_fit:.2f} s; floor (val x keys) {floor:.2f} s")
    one_beta = get_method("ape", steps=(1, 20, 20))
    search = seconds(lambda: one_beta.fit(data), 1) - ape_fit
    print(f"ape search: {search:.2f} s per beta, {200 * search:.0f} s extrapolated to 200 betas")


if __name__ == "__main__":
    main()
