"""TOMM validation study: TFT's learning-rate factor, weight initialisation and epochs.

Chooses the defaults of :class:`fewclip.methods.tomm.TOMM` (``tft_lr_factor``,
``tft_gate_init``, ``epochs``) on the VALIDATION split of the offline base-to-new tasks,
never on test. Per task and seed: the base half of the classes is trained on K shots
(the run's few-shot split; epoch selection on its few-shot val, as in a normal run), and
every configuration is scored on the task's whole val split, base classes and new
classes, by their harmonic mean (HM). The grid varies TFT only (``ctp=False``, which is
cheap and isolates TFT); the chosen values are then the defaults of CTP + TFT too. The
zero-shot reference is CLIP with the prompt "a photo of a {c}." (TOMM at step 0).

    nice -n 10 python benchmarks/tomm_val_study.py --data-root /work/main/data
    python benchmarks/tomm_val_study.py --quick --data-root /work/main/data   # 1 seed
    python benchmarks/tomm_val_study.py --only "init 1.0" ...   # some rows of the grid

Image features and patch tokens are encoded once per task and seed (10 augmented views)
and reused by every configuration, so the study runs in minutes on 2 CPU cores with the
tiny embedded ViT. Prints one table (mean over tasks and seeds) and one per task.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from tqdm.auto import tqdm

from fewclip import offline as _offline  # noqa: F401  (registers the offline task readers)
from fewclip.backbones import load_backbone
from fewclip.config import RunConfig
from fewclip.data import load_dataset, subsample_classes
from fewclip.data.base_new import base_new_classes
from fewclip.methods.base import accuracy
from fewclip.methods.tomm import TOMM
from fewclip.metrics import harmonic_mean
from fewclip.prompting.encoder_base import cache_images, encode_items
from fewclip.runner import sample_split

DATASETS = ["emoji_name_b2n", "emoji_openmoji_subcategory", "tuxpaint_photos"]

#: (label, TOMM options) of the grid; every one is TFT only on patch tokens unless named.
GRID: list[tuple[str, dict]] = [
    (f"patch, lr x{factor}, init {init}, {epochs} ep", opts)
    for factor, init, epochs in [
        (1, 0.0, 4),
        (1, 0.0, 10),
        (10, 0.0, 4),
        (10, 0.0, 10),
        (30, 0.0, 4),
        (30, 0.0, 10),
        (1, 0.25, 10),
        (1, 1.0, 10),  # only the class-conditioned feature from step 0 (not zero-shot)
    ]
    for opts in [
        {"tft": "patch", "tft_lr_factor": float(factor), "tft_gate_init": init, "epochs": epochs}
    ]
] + [
    ("global, lr x1, init 0.0, 10 ep", {"tft": "global", "tft_lr_factor": 1.0, "epochs": 10}),
    ("global, lr x30, init 0.0, 10 ep", {"tft": "global", "tft_lr_factor": 30.0, "epochs": 10}),
]


def score(method: TOMM, part: dict, classnames) -> float:
    with torch.no_grad():
        logits = method.feature_logits(part["f"], classnames, part["t"])
    return accuracy(logits.float(), part["y"])


def encode(backbone, items) -> dict:
    f, t, y, ok = encode_items(backbone, items, tokens=True)
    return {"f": f[ok], "t": t[ok], "y": y[ok]}


def study(args) -> pd.DataFrame:
    backbone = load_backbone(args.backbone, args.pretrained, device="cpu")
    rows = []
    jobs = [(d, s) for d in args.datasets for s in args.seeds]
    chosen = [(label, opts) for label, opts in GRID if not args.only or args.only in label]
    bar = tqdm(total=len(jobs) * (len(chosen) + 1), desc="tomm val study")
    for name, seed in jobs:
        dataset = load_dataset(name, args.data_root)
        base_labels, _ = base_new_classes(dataset)
        base, new = subsample_classes(dataset, "base"), subsample_classes(dataset, "new")
        config = RunConfig(
            backbone=args.backbone,
            pretrained=args.pretrained,
            data_root=args.data_root,
            cache_dir=args.cache_dir,
            dataset=name,
            protocol="base_to_new",
            shots=args.shots,
            seed=seed,
            allow_fewer=True,
            method="tomm",
        )
        split = sample_split(dataset, config).subsample(base_labels)
        cached = cache_images(backbone, split.train, split.val, 10, seed, tokens=True)
        parts = {"base": encode(backbone, base.val), "new": encode(backbone, new.val)}
        names = {"base": base.classnames, "new": new.classnames}
        zero_shot = TOMM(ctp=False, tft="off")
        zero_shot.prepare(backbone, base.classnames, seed=seed)
        accs = {k: score(zero_shot, parts[k], names[k]) for k in parts}
        rows.append({"config": "zero-shot CLIP", "dataset": name, "seed": seed, **accs})
        bar.update()
        for label, opts in chosen:
            method = TOMM(ctp=False, **opts)
            torch.manual_seed(seed)
            start = time.perf_counter()
            fit = method.fit(
                backbone, split.train, split.val, base.classnames, seed=seed, features=cached
            )
            accs = {k: score(method, parts[k], names[k]) for k in parts}
            rows.append(
                {
                    "config": label,
                    "dataset": name,
                    "seed": seed,
                    **accs,
                    "weight": float(method.learner.tft.gate.detach()),
                    "best_epoch": fit.best_epoch,
                    "seconds": time.perf_counter() - start,
                }
            )
            bar.update()
    bar.close()
    frame = pd.DataFrame(rows)
    frame["hm"] = [harmonic_mean(b, n) for b, n in zip(frame["base"], frame["new"], strict=True)]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-emoji-vit")
    parser.add_argument("--pretrained", default="default")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--csv", default=None, help="also write every row here")
    parser.add_argument("--only", default=None, help="only the grid rows whose label has this")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    frame = study(args)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    order = list(dict.fromkeys(frame["config"]))
    cols = ["base", "new", "hm", "weight", "best_epoch"]
    table = frame.groupby("config")[cols].mean().reindex(order)
    table["hm_std"] = frame.groupby("config")["hm"].std().reindex(order)
    print(
        f"\nTOMM val study ({args.backbone}, {args.shots} shots, seeds {args.seeds}, "
        f"VAL split; TFT only): mean over {len(args.datasets)} task(s) and seeds"
    )
    print(table.round(2).to_string())
    per_task = frame.pivot_table(index="config", columns="dataset", values="hm").reindex(order)
    print("\nHM on val per task (mean over seeds):")
    print(per_task.round(2).to_string())
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
