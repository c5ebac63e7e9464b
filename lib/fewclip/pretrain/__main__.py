"""``python -m fewclip.pretrain --arch tiny-emoji-rn --steps 2500 [--install]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from ..backbones import PROJECT_WEIGHTS, WEIGHTS_DIR
from .evaluate import evaluate_checkpoint, write_evaluation
from .train import PretrainConfig, pretrain


def parse(argv: list[str] | None = None) -> tuple[PretrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m fewclip.pretrain", description=__doc__)
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):  # --channels-last / --no-channels-last
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--eval-only", action="store_true", help="evaluate the run's checkpoint only")
    p.add_argument(
        "--install",
        action="store_true",
        help=f"copy checkpoint, config, log and evaluation into {WEIGHTS_DIR}",
    )
    args = p.parse_args(argv)
    if args.arch not in PROJECT_WEIGHTS:
        p.error(f"--arch must be one of {sorted(PROJECT_WEIGHTS)}")
    cfg = PretrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    )
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse(argv)
    run_dir = cfg.run_dir
    ckpt = run_dir / f"{cfg.arch}.safetensors"
    if not args.eval_only:
        ckpt = pretrain(cfg)
    evaluation = evaluate_checkpoint(cfg.arch, ckpt, cfg.corpus)
    write_evaluation(evaluation, run_dir / "eval.json")
    print(
        json.dumps(
            {g: {s: r["top1"] for s, r in v.items()} for g, v in evaluation["trained"].items()}
        )
    )
    if args.install:
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        target = PROJECT_WEIGHTS[cfg.arch].path
        shutil.copyfile(ckpt, target)
        stem = Path(WEIGHTS_DIR) / cfg.arch
        shutil.copyfile(run_dir / "config.json", f"{stem}.config.json")
        shutil.copyfile(run_dir / "train_log.jsonl", f"{stem}.train_log.jsonl")
        shutil.copyfile(run_dir / "eval.json", f"{stem}.eval.json")
        print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
