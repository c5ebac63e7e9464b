"""A tiny model's whole recipe in one resumable command, for another pretraining seed.

``tiny-emoji-rn`` version 5 is five runs of ``python -m fewclip.pretrain``, each continuing
the one before, and ``tiny-emoji-vit`` version 4 four (their model cards, "Recipe"). An
independently pretrained checkpoint (for the claims ledger's headline rows on a second
model) is the same runs with another ``--seed``:

    python -m fewclip.pretrain.recipe --arch tiny-emoji-rn --seed 1
    python -m fewclip.pretrain.recipe --arch tiny-emoji-vit --seed 1

write ``checkpoints/pretrain-rn-seed1/`` and ``checkpoints/pretrain-vit-seed1/``, which the
repository keeps (each stage's weights, config and log; the training states beside them,
``state.pt``, are ignored by git).

Each stage writes ``<root>/v<N>/`` and checkpoints every ``--checkpoint-every`` steps; run
the command again after an interruption and it resumes where it stopped. It starts after
the last finished stage, so only that stage's weights need to be kept. Nothing is
installed: the result is the last stage's ``<root>/v<N>/<arch>/<arch>.safetensors``, used
as ``pretrained=<that path>`` or as the claims report's ``second_checkpoint`` (RN) or
``second_checkpoint_vit`` (ViT).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .train import PretrainConfig, pretrain

#: Augmentations shared by versions 2 to 5 (the model card's commands).
_DRAWN = {"color_jitter": 0.4, "blur_p": 0.1}
_OUTLINED = {**_DRAWN, "outline_p": 0.25, "sketch_p": 0.15}
_ZOOMED = {**_OUTLINED, "zoom_out_p": 0.5, "zoom_out_min": 0.7}

#: Each model's stages as its model card states them (version 1 from scratch on two styles;
#: each later version continues the one before on the eight pretraining styles):
#: ``tiny-emoji-rn`` five, ``tiny-emoji-vit`` four (no group captions).
STAGES: dict[str, list[dict]] = {
    "tiny-emoji-rn": [
        {"styles": "google,twitter", "sampling": "image", "keyword_p": 0.0, "steps": 2500},
        {**_DRAWN, "steps": 4500, "lr": 8e-4},
        {**_OUTLINED, "steps": 4500, "lr": 5e-4},
        {**_ZOOMED, "steps": 2500, "lr": 5e-4},
        {**_ZOOMED, "steps": 1500, "lr": 5e-4, "group_p": 0.002, "group_category_share": 0.0},
    ],
    "tiny-emoji-vit": [
        {
            "styles": "google,twitter",
            "sampling": "image",
            "keyword_p": 0.0,
            "steps": 4000,
            "warmup": 200,
        },
        {**_DRAWN, "steps": 4500, "lr": 8e-4},
        {**_OUTLINED, "steps": 2000, "lr": 5e-4},
        {**_ZOOMED, "steps": 2000, "lr": 5e-4},
    ],
}


def stage_configs(arch: str, seed: int, root: str | Path, **common) -> list[PretrainConfig]:
    """One :class:`PretrainConfig` per stage of ``arch``'s recipe, with ``seed``, each
    starting from the checkpoint of the stage before (``common``: e.g. ``threads``)."""
    if arch not in STAGES:
        raise ValueError(f"no recipe for {arch!r}; recipes: {sorted(STAGES)}")
    out, previous = [], ""
    for i, stage in enumerate(STAGES[arch], start=1):
        out_dir = str(Path(root) / f"v{i}")
        cfg = PretrainConfig(
            arch=arch, seed=seed, out_dir=out_dir, init_from=previous, **common, **stage
        )
        out.append(cfg)
        previous = str(checkpoint_of(cfg))
    return out


def checkpoint_of(cfg: PretrainConfig) -> Path:
    """Where :func:`fewclip.pretrain.train.pretrain` writes a finished stage's weights:
    ``<out_dir>/<arch>/<arch>.safetensors``."""
    return cfg.run_dir / f"{cfg.arch}.safetensors"


def stages_to_run(stages: list[PretrainConfig]) -> list[PretrainConfig]:
    """The stages after the last one whose weights exist (all of them when none does):
    a later stage needs only the weights of the one before it."""
    done = [i for i, cfg in enumerate(stages) if checkpoint_of(cfg).exists()]
    return stages[done[-1] + 1 :] if done else stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fewclip.pretrain.recipe", description=__doc__)
    p.add_argument("--arch", default="tiny-emoji-rn", choices=sorted(STAGES))
    p.add_argument(
        "--seed",
        type=int,
        required=True,
        help="the pretraining seed (the installed checkpoints: 0)",
    )
    p.add_argument("--root", default="", help="default: checkpoints/pretrain-<rn|vit>-seed<seed>")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory layout (faster on CPU for the RN; same computation)",
    )
    args = p.parse_args(argv)
    root = args.root or f"checkpoints/pretrain-{args.arch.rsplit('-', 1)[-1]}-seed{args.seed}"
    common = {
        "threads": args.threads,
        "checkpoint_every": args.checkpoint_every,
        "channels_last": args.channels_last,
    }
    stages = stage_configs(args.arch, args.seed, root, **common)
    todo = stages_to_run(stages)
    for cfg in stages[: len(stages) - len(todo)]:
        print(f"{cfg.out_dir}: done, skipped")
    for cfg in todo:
        print(f"{cfg.out_dir}: {dataclasses.asdict(cfg)}")
        pretrain(cfg)
    print(f"the checkpoint: {checkpoint_of(stages[-1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
