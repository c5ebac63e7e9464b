"""Prompt words: zero-shot per template, and each prompt method from OpenAI's phrase against
the backbone's own words.

    PYTHONPATH=lib FEWCLIP_DATA=data python benchmarks/prompt_words.py           # print
    PYTHONPATH=lib FEWCLIP_DATA=data python benchmarks/prompt_words.py --record  # + CSV

Base-to-new on ``emoji_openmoji_subcategory`` (4 shots, seed 1) with the embedded tiny
models: zero-shot CLIP with the task's templates, with "an emoji of {}." (the tiny models'
pretraining caption, their own words) and with "a photo of a {}." (OpenAI's, what the
prompt methods started from before); then APEX (ViT only), TOMM, CoCoOp and CoOp with
each method's default schedule, the init phrase being the only change ("a photo of a",
i.e. ``init="official"``, against ``init="backbone"``; CoOp also from random context, its
official default); then the same with Dassl's training crop (``crop_scale_min="official"``,
area 0.08-1) against the default, the backbone's pretraining crop; then the options that
start a method at zero-shot (CoCoOp's ``meta_init="zero"``, MaPLe's and PromptSRC's
``deep_text_init="context"``, ProGrad's ``n_ctx="words"``) against the defaults, and the
text-side peers and CLIP-LoRA at their defaults. Zero-shot is also scored on
``emoji_subcategory_b2n``.

``--record`` appends base / new / HM per setting to ``benchmarks/results/prompt_words.csv``
(through ``results_csv.py``: date, commit, machine, model); run
``benchmarks/write_performance.py`` afterwards to publish it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import append_rows  # noqa: E402

from fewclip.backbones import OFFICIAL_WORDS, PROJECT_WEIGHTS, load_backbone  # noqa: E402
from fewclip.config import RunConfig  # noqa: E402
from fewclip.metrics import harmonic_mean  # noqa: E402
from fewclip.runner import run  # noqa: E402

TASK = "emoji_openmoji_subcategory"
ZERO_SHOT_TASKS = (TASK, "emoji_subcategory_b2n")
#: (method, options, what they set): the init phrase from OpenAI's "a photo of a" (the
#: previous start, ``"official"``) against the backbone's own words; APEX also with the
#: official epsilon = 0.05 (its default is relative to a backbone with its own words)
METHODS = (
    ("apex", {"text_init": OFFICIAL_WORDS, "epsilon": 0.05}, 'init "a photo of a", epsilon 0.05'),
    ("apex", {"text_init": "backbone", "epsilon": 0.05}, "init {words}, epsilon 0.05"),
    ("apex", {"text_init": "backbone"}, "init {words}, epsilon relative"),
    ("tomm", {"init": OFFICIAL_WORDS}, 'init "a photo of a"'),
    ("tomm", {"init": "backbone"}, "init {words}"),
    ("cocoop", {"init": OFFICIAL_WORDS}, 'init "a photo of a"'),
    ("cocoop", {"init": "backbone"}, "init {words}"),
    ("coop", {"init": None}, "random context"),
    ("coop", {"init": OFFICIAL_WORDS}, 'init "a photo of a"'),
    ("coop", {"init": "backbone"}, "init {words}"),
    # the training crop: Dassl's 0.08-1 against the default (the backbone's pretraining crop)
    ("apex", {"text_init": "backbone", "crop_scale_min": "official"}, "init {words}, crop 0.08-1"),
    ("tomm", {"init": "backbone", "crop_scale_min": "official"}, "init {words}, crop 0.08-1"),
    ("cocoop", {"init": "backbone", "crop_scale_min": "official"}, "init {words}, crop 0.08-1"),
    ("coop", {"init": "backbone", "crop_scale_min": "official"}, "init {words}, crop 0.08-1"),
    # starting at zero-shot: CoCoOp's Meta-Net, MaPLe's and PromptSRC's deeper text prompts
    ("cocoop", {"init": "backbone", "meta_init": "zero"}, "init {words}, Meta-Net at zero"),
    ("maple", {}, "default: init {words}, deeper text prompts N(0, 0.02)"),
    ("maple", {"deep_text_init": "context"}, "init {words}, deeper text prompts from the context"),
    ("promptsrc", {}, "default: init {words}, deeper text prompts N(0, 0.02)"),
    (
        "promptsrc",
        {"deep_text_init": "context"},
        "init {words}, deeper text prompts from the context",
    ),
    # the text-side peers and CLIP-LoRA at their defaults (the backbone's crop and words)
    ("kgcoop", {}, "default: init {words}"),
    ("prograd", {}, "default: 16 tokens, zeros before {words}"),
    ("prograd", {"n_ctx": "words"}, "{words} alone (n_ctx = its words)"),
    ("proda", {}, "default: 32 random prompts"),
    ("proda", {"init": "backbone"}, "32 prompts from {words}"),
    ("clip_lora", {}, "default"),
)
#: Methods whose deep visual prompts need a ViT.
VIT_ONLY = ("apex", "maple", "promptsrc")


def model_label(arch: str) -> str:
    """``tiny-emoji-vit version 4``: the committed checkpoint's version (its eval JSON)."""
    import json

    evaluation = PROJECT_WEIGHTS[arch].path.with_suffix(".eval.json")
    version = json.loads(evaluation.read_text()).get("version", "?")
    return f"{arch} version {version}"


def matches(setting: str, part: str) -> bool:
    """``part`` is in ``setting``; a ``part`` ending in "$" must end it."""
    return setting.endswith(part[:-1]) if part.endswith("$") else part in setting


def scores(record: dict) -> dict[str, float]:
    m = record["metrics"]
    base, new = m["base"]["accuracy"], m["new"]["accuracy"]
    return {"base": base, "new": new, "hm": harmonic_mean(base, new)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny-emoji-vit,tiny-emoji-rn")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-root", default=os.environ.get("FEWCLIP_DATA", "data"))
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument(
        "--only",
        default="",
        help="run only settings containing one of these (comma-separated; 'x$': ending in x)",
    )
    parser.add_argument("--record", action="store_true", help="append to the results CSV")
    parser.add_argument("--task", default=TASK, help="the trained runs' base-to-new task")
    parser.add_argument(
        "--allow-fewer", action="store_true", help="classes with fewer than K images give all"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    common = {
        "protocol": "base_to_new",
        "shots": args.shots,
        "seed": args.seed,
        "data_root": args.data_root,
        "cache_dir": args.cache_dir,
        "progress": False,
        "allow_fewer": args.allow_fewer,
    }
    lines = ["| model | setting | base | new | HM | s |", "|---|---|---|---|---|---|"]
    for arch in args.backbones.split(","):
        label = model_label(arch)
        words = load_backbone(arch, device="cpu").words
        settings: list[tuple[str, RunConfig]] = []
        for task in dict.fromkeys((args.task, *ZERO_SHOT_TASKS[1:])):
            for name, templates in (
                ("the task's templates", None),
                (f'"{words.template}"', [words.template]),
                ('"a photo of a {}."', ["a photo of a {}."]),
            ):
                config = RunConfig(
                    method="zero_shot", dataset=task, backbone=arch, templates=templates, **common
                )
                settings.append((f"{task}: zero-shot, {name}", config))
        for method, options, shown in METHODS:
            if method in VIT_ONLY and "vit" not in arch:
                continue  # deep visual prompts need a ViT
            shown = shown.format(words=f'"{words.init}" (the backbone\'s)')
            config = RunConfig(
                method=method, dataset=args.task, backbone=arch, options=options, **common
            )
            settings.append((f"{args.task}: {method}, {shown}", config))
        for setting, config in settings:
            if args.only and not any(matches(setting, p) for p in args.only.split(",")):
                continue
            start = time.time()
            result = scores(run(config))
            seconds = time.time() - start
            row = " | ".join(f"{result[k]:.1f}" for k in ("base", "new", "hm"))
            lines.append(f"| {label} | {setting} | {row} | {seconds:.0f} |")
            print(lines[-1], flush=True)
            if args.record:
                append_rows(
                    "prompt_words",
                    [
                        {"setting": f"{arch}, {setting}", "metric": k, "value": f"{v:.1f}"}
                        for k, v in result.items()
                    ],
                    model=label,
                    note=f"base-to-new, {args.shots} shots, seed {args.seed}, test accuracy (%)",
                )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
