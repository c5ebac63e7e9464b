"""Zero-shot evaluation of a pretrained tiny CLIP on the emoji corpus.

Loads the checkpoint through :func:`fewclip.backbones.load_backbone` (the path users take)
and, for every style, classifies the base image of each emoji among all names of its group
with the caption ``"an emoji of {name}."``:

- ``seen_names``: emoji whose names were used in pretraining. On the training styles
  (google, twitter) this is training-set accuracy; on openmoji and noto (styles never
  seen) it measures transfer to new renderings.
- ``heldout_names``: the 10% of names never seen in pretraining (any style).
- ``all_names``: every emoji the style draws, among all of them (seen and held out).

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
def _encode(backbone: Backbone, paths: list[Path]) -> torch.Tensor:
    feats = []
    for i in range(0, len(paths), 256):
        batch = torch.stack([backbone.preprocess(load_rgb(str(p))) for p in paths[i : i + 256]])
        feats.append(backbone.encode_images(batch))
    return torch.cat(feats)


def _topk_accuracy(image: torch.Tensor, text: torch.Tensor) -> dict:
    """Image i's true class is text row i; (N, D) and (N, D) normalised features."""
    logits = image @ text.T
    labels = torch.arange(len(text))
    top5 = logits.topk(min(5, len(text)), dim=-1).indices
    return {
        "top1": round((top5[:, 0] == labels).float().mean().item() * 100, 2),
        "top5": round((top5 == labels[:, None]).any(-1).float().mean().item() * 100, 2),
        "classes": len(text),
        "images": len(image),
        "chance_top1": round(100 / len(text), 3),
    }


@torch.no_grad()
def evaluate_backbone(backbone: Backbone, corpus_dir: str | Path) -> dict:
    """Top-1/top-5 zero-shot accuracy per (group of names, style).

    Each style's base pictures and each name's caption are encoded once; a group scores
    its emoji among the names of the same group.
    """
    corpus_dir = Path(corpus_dir)
    emoji = read_corpus(corpus_dir)
    text = backbone.encode_text([EVAL_TEMPLATE.format(e.name) for e in emoji])
    groups = {
        "all_names": [True] * len(emoji),
        "seen_names": [not e.heldout for e in emoji],
        "heldout_names": [e.heldout for e in emoji],
    }
    results: dict = {g: {} for g in groups}
    for style in TRAIN_STYLES + EVAL_STYLES:
        present = [i for i, e in enumerate(emoji) if e.images.get(style)]
        if not present:
            continue
        image = _encode(backbone, [corpus_dir / emoji[i].images[style][0] for i in present])
        for group, member in groups.items():
            rows = [k for k, i in enumerate(present) if member[i]]
            if rows:
                idx = torch.tensor(rows)
                results[group][style] = _topk_accuracy(image[idx], text[torch.tensor(present)[idx]])
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
        "note": "seen_names on the pretraining styles is training-set accuracy; openmoji, "
        "noto, fluent-flat and fluent-mono are styles never seen in pretraining; "
        "heldout_names were never seen at all; all_names is every name the style draws.",
        "trained": evaluate_backbone(trained, corpus_dir),
        "random_init": evaluate_backbone(untrained, corpus_dir),
    }


def write_evaluation(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=1))
    return path
