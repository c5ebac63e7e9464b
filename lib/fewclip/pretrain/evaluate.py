"""Zero-shot evaluation of a pretrained tiny CLIP on the emoji corpus.

Loads the checkpoint through :func:`fewclip.backbones.load_backbone` (the path users take)
and, for every style, classifies the base image of each emoji among all names of its group
with the caption ``"an emoji of {name}."``:

- ``seen_names``: emoji whose names were used in pretraining. On the training styles
  (google, twitter) this is training-set accuracy; on openmoji and noto (styles never
  seen) it measures transfer to new renderings.
- ``heldout_names``: the 10% of names never seen in pretraining (any style).

A randomly initialised model of the same architecture is evaluated alongside, so the
report shows what chance looks like for this exact setup.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backbones import Backbone, load_backbone
from ..images import load_rgb
from .data import EVAL_STYLES, EVAL_TEMPLATE, TRAIN_STYLES, read_corpus


@torch.no_grad()
def _topk_accuracy(
    backbone: Backbone, paths: list[Path], labels: torch.Tensor, names: list[str]
) -> dict:
    text = backbone.encode_text([EVAL_TEMPLATE.format(n) for n in names])
    feats = []
    for i in range(0, len(paths), 256):
        batch = torch.stack([backbone.preprocess(load_rgb(str(p))) for p in paths[i : i + 256]])
        feats.append(backbone.encode_images(batch))
    logits = torch.cat(feats) @ text.T
    top5 = logits.topk(min(5, len(names)), dim=-1).indices
    return {
        "top1": round((top5[:, 0] == labels).float().mean().item() * 100, 2),
        "top5": round((top5 == labels[:, None]).any(-1).float().mean().item() * 100, 2),
        "classes": len(names),
        "images": len(paths),
        "chance_top1": round(100 / len(names), 3),
    }


def evaluate_backbone(backbone: Backbone, corpus_dir: str | Path) -> dict:
    """Top-1/top-5 zero-shot accuracy per (group of names, style)."""
    corpus_dir = Path(corpus_dir)
    emoji = read_corpus(corpus_dir)
    results: dict = {}
    for group, members in (
        ("seen_names", [e for e in emoji if not e.heldout]),
        ("heldout_names", [e for e in emoji if e.heldout]),
    ):
        results[group] = {}
        for style in TRAIN_STYLES + EVAL_STYLES:
            present = [e for e in members if e.images.get(style)]
            if not present:
                continue
            names = [e.name for e in present]
            paths = [corpus_dir / e.images[style][0] for e in present]
            labels = torch.arange(len(present))
            results[group][style] = _topk_accuracy(backbone, paths, labels, names)
    return results


def evaluate_checkpoint(arch: str, checkpoint: str | Path, corpus_dir: str | Path) -> dict:
    """Evaluate a checkpoint and a random init of the same arch; JSON-able dict."""
    trained = load_backbone(arch, str(checkpoint), device="cpu")
    untrained = load_backbone(arch, None, device="cpu")
    return {
        "arch": arch,
        "checkpoint": Path(checkpoint).name,
        "logit_scale": round(trained.logit_scale, 3),
        "caption": EVAL_TEMPLATE,
        "note": "seen_names on google/twitter is training-set accuracy; openmoji and noto "
        "are styles never seen in pretraining; heldout_names were never seen at all.",
        "trained": evaluate_backbone(trained, corpus_dir),
        "random_init": evaluate_backbone(untrained, corpus_dir),
    }


def write_evaluation(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=1))
    return path
