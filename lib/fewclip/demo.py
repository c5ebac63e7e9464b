"""``fewclip demo``: a quick end-to-end check on the embedded default (seconds to a minute).

Runs zero-shot CLIP, Tip-Adapter-F and DualAdapter (16 shots, seed 1) on one offline task
with the tiny CLIP pretrained by fewclip, through the run API and the results store, and
prints their accuracy with the model that produced it. The full product is the report
build (``fewclip reports``, ``make demo``).
"""

from __future__ import annotations

import argparse

from .config import RunConfig
from .results import ResultStore
from .runner import run

DEMO_METHODS = ("zero_shot", "linear_probe", "tip_adapter_f", "dual_adapter")


def main(args: argparse.Namespace) -> int:
    store = ResultStore(args.results) if args.results else None
    base = RunConfig(
        dataset=args.dataset,
        backbone=args.backbone,
        shots=args.shots,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
    )
    rows = []
    for method in DEMO_METHODS:
        record = run(base.replace(method=method), store=store)
        rows.append((method, record["accuracy"], record["fit_seconds"] or 0.0))
    label = record["model_label"]
    print(f"\n{args.dataset}, {args.shots} shots, seed 1, model: {label}")
    print(f"{'method':<16}{'top-1 %':>9}{'fit s':>8}")
    for method, acc, fit in rows:
        print(f"{method:<16}{acc:>9.2f}{fit:>8.2f}")
    chance = 100.0 / record["metrics"]["difficulty"]["num_classes"]
    print(f"(chance {chance:.2f}%)")
    return 0
