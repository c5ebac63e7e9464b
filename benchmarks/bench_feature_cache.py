"""Benchmark: feature-level methods trained on cached features versus re-encoding images.

The official CLIP-Adapter, Tip-Adapter-F and DualAdapter codes push every training batch
of augmented images through the frozen CLIP image encoder at every step. fewclip encodes
the few-shot images once (``--views`` augmented views, random resized crop + flip at the
method's own scale: 0.08-1 for CLIP-Adapter, 0.5-1 for the cache methods; cached on disk)
and trains on those tensors; epoch e uses view e % V.

Fit times are medians: of ``--repeats`` cached fits (default 10: a fit of a fraction of
a second varies by tens of percent on a shared machine), timed half before and half after
the ``--reencode-repeats`` re-encoding fits (default 1: each takes seconds, its own noise
averages out), so that both sides are measured over the same stretch of time.

Both sides here run the *same* method code on the same model, data, epochs and seed; the
re-encoding side only replaces the cached view of each epoch by a fresh augmented pass
through the image encoder (:class:`ReencodingData`), as the official loops do. Each
method is first fitted once for one epoch, untimed, so that neither side pays the
process's one-off first-call costs. Both
sides share the cache keys (the average of the same augmented views) and the validation
and test features. Printed per method: fit time with cached features, the one-off
extraction of the views, fit time when re-encoding, the ratio, and both test accuracies
(they differ a little: the re-encoding side sees a new augmentation every epoch, the
cached side cycles through V of them).

The feature-level peers (APE, APE-T, TaskRes, GDA, LP++, CLAP) are timed on cached
features only, beside the adapters (``--reencode-peers`` adds their re-encoding side).
``--record`` appends the figures to ``benchmarks/results/feature_cache.csv`` (date, commit,
machine), published in ``docs/performance.md`` by ``benchmarks/write_performance.py``.

    python benchmarks/bench_feature_cache.py --quick
    python benchmarks/bench_feature_cache.py --dataset fashion_mnist --shots 16
    python benchmarks/bench_feature_cache.py --backbone RN50 --pretrained openai --dataset dtd
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fewclip
from fewclip.backbones import load_backbone
from fewclip.config import RunConfig
from fewclip.data import load_dataset
from fewclip.features import FeatureCache, augmented_transform, encode_items
from fewclip.methods import get_method
from fewclip.methods.base import FeatureData, accuracy
from fewclip.runner import feature_data, sample_split, test_features

#: method -> options; ``dataset`` picks the official per-dataset settings where a method has them
METHODS = {
    "clip_adapter": {},
    "tip_adapter_f": {"dataset": None},
    "dual_adapter": {"dataset": None},
    "ape": {"dataset": None},
    "ape_t": {"dataset": None},
    "taskres": {"dataset": None},
    "gda": {},
    "lp_pp": {},
    "clap": {},
}
#: The feature-level peers: timed on cached features only (``--reencode-peers`` adds the
#: re-encoding side; APE, GDA, LP++ and CLAP read their views once, not one per epoch)
PEERS = ("ape", "ape_t", "taskres", "gda", "lp_pp", "clap")


@dataclasses.dataclass
class ReencodingData(FeatureData):
    """FeatureData whose training view of each epoch is encoded afresh from the images."""

    backbone: object = None
    items: list = dataclasses.field(default_factory=list)
    seed: int = 0
    scale: tuple = (0.5, 1.0)
    encode_seconds: float = 0.0

    def view(self, epoch: int) -> torch.Tensor:
        start = time.perf_counter()
        out = encode_items(
            self.backbone,
            self.items,
            augmented_transform(self.backbone, self.scale),
            seed=10_000 + self.seed * 1009 + epoch,  # a new augmentation every epoch
            progress=False,
        )
        self.encode_seconds += time.perf_counter() - start
        return out.features.to(self.device)


def bench(args: argparse.Namespace) -> list[dict]:
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    import fewclip.offline  # noqa: F401  (registers the offline tasks)

    dataset = load_dataset(args.dataset, args.data_root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(
            dataset=args.dataset,
            shots=args.shots,
            augment_views=args.views,
            cache_dir=tmp,
            data_root=args.data_root,
            progress=False,
        )
        cache = FeatureCache(tmp)
        split = sample_split(dataset, config)
        test_f, test_y, _ = test_features(backbone, dataset.test, config, cache, "test")
        by_scale: dict[tuple, tuple[FeatureData, float]] = {}
        for name, options in METHODS.items():
            if args.methods and name not in args.methods:
                continue
            options = {k: args.dataset if k == "dataset" else v for k, v in options.items()}
            # each method's own crop scale, on both sides (CLIP-Adapter: Dassl's 0.08-1)
            scale = get_method(name, **options).view_scale()
            if scale not in by_scale:
                start = time.perf_counter()
                extracted, _ = feature_data(
                    backbone, dataset, split, config, cache, view_scale=scale
                )
                by_scale[scale] = extracted, time.perf_counter() - start
            data, extract_s = by_scale[scale]
            slow = ReencodingData(
                **{f.name: getattr(data, f.name) for f in dataclasses.fields(FeatureData)},
                backbone=backbone,
                items=split.train,
                seed=1,
                scale=scale,
            )
            trained = "epochs" in {f.name for f in dataclasses.fields(get_method(name).Options)}
            if args.epochs and trained:
                options["epochs"] = args.epochs
            # one-off costs of a first call in the process (lazy imports, kernel set-up) are
            # not per-fit costs: a 1-epoch fit on the cached side pays them before timing
            warm = {**options, "epochs": 1} if trained else options
            get_method(name, **warm).fit(data, seed=1)
            seconds: dict[str, list[float]] = {"cached": [], "re-encode": []}
            fitted = {}  # each side's last fit (every fit of a side makes the same choices)
            # the cached fits half before and half after the re-encoding ones: both sides
            # timed over the same stretch of a shared machine, whose speed drifts
            before = (args.repeats + 1) // 2
            reencode = args.reencode_repeats if name not in PEERS or args.reencode_peers else 0
            order = (
                [("cached", data)] * before
                + [("re-encode", slow)] * reencode
                + [("cached", data)] * (args.repeats - before)
            )
            for side, inputs in order:  # the same fit each time: the median of its times
                method = get_method(name, **options)
                torch.manual_seed(1)
                start = time.perf_counter()
                method.fit(inputs, seed=1)
                seconds[side].append(time.perf_counter() - start)
                fitted[side] = method
            timings = {side: statistics.median(v) for side, v in seconds.items() if v}
            timings.setdefault("re-encode", float("nan"))
            accs = {side: accuracy(m.logits(test_f), test_y) for side, m in fitted.items()}
            accs.setdefault("re-encode", float("nan"))
            rows.append(
                {
                    "method": name,
                    "model": backbone.label,
                    "epochs": getattr(method.options, "epochs", "free") or "default",
                    "cached_fit_s": timings["cached"],
                    "extract_s": extract_s,
                    "reencode_fit_s": timings["re-encode"],
                    "ratio": timings["re-encode"] / timings["cached"],
                    "ratio_with_extraction": timings["re-encode"] / (timings["cached"] + extract_s),
                    "cached_acc": accs["cached"],
                    "reencode_acc": accs["re-encode"],
                }
            )
    print(
        f"\n{args.dataset}, {dataset.num_classes} classes x {args.shots} shots, "
        f"{len(split.train)} training images, {args.views} cached views; "
        f"backbone {backbone.label} on {backbone.device}; "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"fit times: median of {args.repeats} cached and {args.reencode_repeats} re-encoding fits"
    )
    print(
        f"{'method':<15}{'epochs':>7}{'cached [s]':>12}{'+views [s]':>12}{'re-encode [s]':>15}"
        f"{'ratio':>8}{'ratio incl.':>13}{'acc cached':>12}{'acc re-enc.':>13}"
    )
    for r in rows:
        reencoded = r["reencode_fit_s"] == r["reencode_fit_s"]  # NaN: cached side only
        slow = (
            f"{r['reencode_fit_s']:>15.2f}{r['ratio']:>7.1f}x{r['ratio_with_extraction']:>12.1f}x"
            if reencoded
            else f"{'-':>15}{'-':>8}{'-':>13}"
        )
        slow_acc = f"{r['reencode_acc']:>12.2f}%" if reencoded else f"{'-':>13}"
        print(
            f"{r['method']:<15}{r['epochs']:>7}{r['cached_fit_s']:>12.2f}{r['extract_s']:>12.2f}"
            f"{slow}{r['cached_acc']:>11.2f}%{slow_acc}"
        )
    print(
        "ratio: re-encoding fit time / cached fit time; 'ratio incl.' also charges the "
        "cached side with the one-off extraction of its views"
    )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny-emoji-rn")
    parser.add_argument("--pretrained", default="default")
    parser.add_argument("--dataset", default="emoji_openmoji_subcategory")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="override every method's")
    parser.add_argument(
        "--methods", nargs="+", choices=sorted(METHODS), help="only these (default: all)"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="cached fits timed per method (median)"
    )
    parser.add_argument(
        "--reencode-repeats", type=int, default=1, help="re-encoding fits timed (median)"
    )
    parser.add_argument(
        "--reencode-peers", action="store_true", help="also re-encode for the peers"
    )
    parser.add_argument("--record", action="store_true", help="append to results/ CSV")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 epochs, 2 views, 4 shots")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.views, args.shots = 5, 2, 4
    rows = bench(args)
    if args.record:
        record(rows, args, argv)
    return rows


def record(rows: list[dict], args: argparse.Namespace, argv: list[str] | None) -> None:
    """Append each method's figures to ``benchmarks/results/feature_cache.csv``."""
    import sys

    from results_csv import append_rows

    out = []
    for r in rows:
        epochs = "training-free" if r["epochs"] == "free" else f"{r['epochs']} epochs"
        setting = (
            f"{r['method']} ({epochs}), {args.dataset}, {args.shots} shots, "
            f"{args.views} cached views"
        )
        out.append(
            {"setting": setting, "metric": "cached fit", "value": f"{r['cached_fit_s']:.3f} s"}
        )
        if r["reencode_fit_s"] == r["reencode_fit_s"]:  # not NaN: the re-encoding side ran
            out.append(
                {
                    "setting": setting,
                    "metric": "re-encoding fit",
                    "value": f"{r['reencode_fit_s']:.2f} s",
                }
            )
            out.append({"setting": setting, "metric": "ratio", "value": f"{r['ratio']:.1f}x"})
        out.append(
            {"setting": setting, "metric": "test acc cached", "value": f"{r['cached_acc']:.2f}%"}
        )
    note = "python benchmarks/bench_feature_cache.py " + " ".join(argv or sys.argv[1:])
    model = rows[0]["model"] if rows else args.backbone
    card = Path(fewclip.__file__).parent / "weights" / f"{args.backbone}.eval.json"
    if args.pretrained == "default" and card.exists():  # an embedded model: name its version
        model = f"{args.backbone} version {json.loads(card.read_text())['version']}"
    print("appended to", append_rows("feature_cache", out, model=model, note=note))


if __name__ == "__main__":
    main()
