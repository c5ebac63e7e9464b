"""Benchmark: what caching buys the text-side prompt learners.

1. The text-side prompt learners (CoOp, KgCoOp, ProGrad, ProDA: ``--methods``) trained on
   cached image features (V augmented views, encoded once) versus re-encoding freshly
   augmented images at every step (the official codes' way), same epochs, data and seed;
   also the cache with one view per epoch, which is the same computation as re-encoding.
   Prints wall time, the cached-vs-re-encoding ratio and test accuracy per method.
2. Per-step cost (forward + backward) of image-conditioned prompts (CoCoOp, TOMM's CTP):
   B images x C classes through the text encoder as one batch, versus one text-encoder
   call per image (the official CoCoOp loop), each with and without cutting the prompts
   after their last EOT token.
3. The methods that change the image encoder (APEX, MaPLe, PromptSRC: deep visual prompts;
   CLIP-LoRA: low-rank attention updates) have no cached path: every step re-encodes
   its images. Their fit of one epoch (one pass over the training set; set-up and
   validation included) is timed beside
   CoOp's cached and re-encoding epochs of part 1, with the ratio to CoOp's cached epoch.

    python benchmarks/bench_prompt_cache.py --quick
    python benchmarks/bench_prompt_cache.py --arch tiny-emoji-vit --pretrained default --record

``--record`` appends the figures to ``benchmarks/results/prompt_cache.csv`` (date, commit,
machine), from which ``benchmarks/write_performance.py`` writes ``docs/performance.md``.

Runs on the synthetic coloured-squares task (:mod:`fewclip.prompting.toy`); with a
random-init backbone the accuracies only show that both paths train alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fewclip.backbones import load_backbone
from fewclip.methods import get_method
from fewclip.methods.tomm import TOMM
from fewclip.prompting.toy import COLOURS, coloured_squares

#: Text-side methods whose image encoder is frozen, and their options in this benchmark.
CACHED_METHODS = {
    "coop": {"init": "a photo of a"},
    "kgcoop": {},
    "prograd": {},
    "proda": {"n_prompts": 8},
}


def bench_cache(backbone, args, root: Path, name: str = "coop") -> list[dict]:
    classes = min(args.classes, len(COLOURS))
    train, names = coloured_squares(root / "train", classes, args.shots, seed=0)
    val, _ = coloured_squares(root / "val", classes, min(args.shots, 4), seed=1)
    test, _ = coloured_squares(root / "test", classes, args.test_per_class, seed=2)
    common = dict(
        **CACHED_METHODS[name],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer="adam",
        warmup_epochs=0,
    )
    variants = [
        (f"cached, {args.views} views", dict(views=args.views)),
        ("cached, 1 view per epoch", dict(views=None)),
        ("re-encode every step", dict(cache_images=False)),
    ]
    rows = []
    for label, extra in variants:
        method = get_method(name, **common, **extra)
        start = time.perf_counter()
        method.fit(backbone, train, val, names, seed=1, num_workers=args.workers)
        seconds = time.perf_counter() - start
        acc = method.accuracy(backbone, test, names)
        rows.append({"method": name, "variant": label, "fit_s": seconds, "test_acc": acc})
    reference = rows[-1]["fit_s"]
    print(
        f"\n{name}, {classes} classes x {args.shots} shots, {args.epochs} epochs, {backbone.arch}"
    )
    print(f"{'variant':<28}{'fit [s]':>10}{'speed-up':>10}{'test acc':>10}")
    for row in rows:
        row["speedup"] = reference / row["fit_s"]
        print(
            f"{row['variant']:<28}{row['fit_s']:>10.2f}{row['speedup']:>9.1f}x"
            f"{row['test_acc']:>9.1f}%"
        )
    return rows


def step_time(method: TOMM, features, labels, names, per_image: bool, reps: int) -> float:
    """Mean seconds of one forward + backward step."""
    learner = method.learner
    learner.train()

    def step():
        learner.zero_grad(set_to_none=True)
        if per_image:
            loss = sum(
                method.loss(features[i : i + 1], labels[i : i + 1], names)
                for i in range(len(features))
            ) / len(features)
        else:
            loss = method.loss(features, labels, names)
        loss.backward()

    step()  # warm-up (builds the class prompt cache)
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps


def bench_steps(backbone, args) -> list[dict]:
    names = [f"object number {i}" for i in range(args.step_classes)]
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(args.step_batch, backbone.embed_dim, generator=g), dim=-1)
    features = features.to(backbone.device)
    labels = torch.randint(0, len(names), (args.step_batch,), generator=g).to(backbone.device)
    rows = []
    for label, options in [
        ("CoCoOp", dict(ctp=False, image_bias=True, tft=False, loss="ce")),
        ("CTP", dict(ctp=True, tft=False, loss="ce")),
    ]:
        method = TOMM(**options)
        method.prepare(backbone, names, seed=0)
        prompt = method.learner.prompt
        for truncate in (True, False):
            prompt.truncate = truncate
            for per_image in (False, True):
                seconds = step_time(method, features, labels, names, per_image, args.reps)
                rows.append(
                    {
                        "method": label,
                        "batched": not per_image,
                        "truncate": truncate,
                        "ms_per_step": 1000 * seconds,
                    }
                )
    length = prompt.tower.truncated_length(prompt.class_prompts(names).ids)
    print(
        f"\nPer-step cost, B = {args.step_batch} images x C = {len(names)} classes, "
        f"prompts of {length} tokens after cutting (context length {backbone.context_length})"
    )
    print(f"{'method':<10}{'classes batched':>18}{'cut at EOT':>12}{'ms / step':>12}")
    for row in rows:
        print(
            f"{row['method']:<10}{str(row['batched']):>18}{str(row['truncate']):>12}"
            f"{row['ms_per_step']:>12.1f}"
        )
    return rows


#: Re-encoding methods of part 3 and their options for one epoch (one pass for CLIP-LoRA).
REENCODING = {
    "apex": {"epochs": 1},
    "maple": {"epochs": 1},
    "promptsrc": {"epochs": 1},
    "clip_lora": {},
}


def bench_reencoding(backbone, args, root: Path, coop_rows: list[dict]) -> list[dict]:
    """Seconds per epoch of the methods that re-encode, against the epochs of part 1's first
    method (``coop_rows``: its cached and re-encoding rows)."""
    classes = min(args.classes, len(COLOURS))
    train, names = coloured_squares(root / "train", classes, args.shots, seed=0)
    val, _ = coloured_squares(root / "val", classes, min(args.shots, 4), seed=1)
    cached = coop_rows[0]["fit_s"] / args.epochs
    rows = [
        {"method": f"{row['method']} ({row['variant']})", "epoch_s": row["fit_s"] / args.epochs}
        for row in (coop_rows[0], coop_rows[-1])
    ]
    for name, options in REENCODING.items():
        if name in ("apex", "maple", "promptsrc") and not backbone.is_vit:
            continue
        options = dict(options)
        if name == "clip_lora":  # one pass over the training set
            options["iterations"] = -(-len(train) // 32)
            options["encoder"] = "both" if backbone.is_vit else "text"
        method = get_method(name, **options)
        start = time.perf_counter()
        method.fit(backbone, train, val, names, seed=1, num_workers=args.workers)
        rows.append({"method": name, "epoch_s": time.perf_counter() - start})
    print(f"\nSeconds per epoch, {classes} classes x {args.shots} shots, {backbone.arch}")
    print(f"{'method':<36}{'epoch [s]':>10}{'x cached CoOp':>15}")
    for row in rows:
        row["ratio"] = row["epoch_s"] / cached
        print(f"{row['method']:<36}{row['epoch_s']:>10.2f}{row['ratio']:>14.1f}x")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="fewclip-test-vit")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(CACHED_METHODS))
    parser.add_argument("--step-batch", type=int, default=4)
    parser.add_argument("--step-classes", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small settings, well under a minute")
    parser.add_argument(
        "--record", action="store_true", help="append the figures to benchmarks/results/"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(CACHED_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(CACHED_METHODS)}")
    if args.quick:
        args.classes, args.shots, args.epochs, args.test_per_class = 4, 16, 20, 10
        args.views, args.step_classes, args.reps = 4, 20, 3
    backbone = load_backbone(args.arch, args.pretrained, device=args.device)
    print(f"backbone: {backbone.label} on {backbone.device} ({backbone.precision})")
    with tempfile.TemporaryDirectory() as tmp:
        cache_rows = [
            row
            for name in args.methods
            for row in bench_cache(backbone, args, Path(tmp) / name, name)
        ]
        first = [r for r in cache_rows if r["method"] == cache_rows[0]["method"]]
        reencoding_rows = bench_reencoding(backbone, args, Path(tmp) / "reencoding", first)
    step_rows = bench_steps(backbone, args)
    if args.record:
        record(backbone, args, cache_rows, step_rows, reencoding_rows)


def record(
    backbone, args, cache_rows: list[dict], step_rows: list[dict], reencoding_rows: list[dict]
) -> None:
    """Append the figures to benchmarks/results/prompt_cache.csv."""
    from results_csv import append_rows

    setting = f"{args.classes} classes x {args.shots} shots, {args.epochs} epochs"
    rows = [
        {"setting": f"{r['method']}, {setting}: {r['variant']}", "metric": m, "value": v}
        for r in cache_rows
        for m, v in (
            ("fit", f"{r['fit_s']:.1f} s"),
            ("speed-up", f"{r['speedup']:.1f}x"),
            ("test accuracy", f"{r['test_acc']:.1f}%"),
        )
    ]
    rows += [
        {
            "setting": f"{r['method']} step, {args.step_batch} images x {args.step_classes} "
            f"classes, batched {r['batched']}, cut at EOT {r['truncate']}",
            "metric": "step",
            "value": f"{r['ms_per_step']:.0f} ms",
        }
        for r in step_rows
    ]
    rows += [
        {
            "setting": f"one epoch of {r['method']}, {args.classes} classes x {args.shots} shots",
            "metric": "epoch (x cached CoOp)",
            "value": f"{r['epoch_s']:.2f} s ({r['ratio']:.1f}x)",
        }
        for r in reencoding_rows
    ]
    print("appended to", append_rows("prompt_cache", rows, model=backbone.label))


if __name__ == "__main__":
    main()
