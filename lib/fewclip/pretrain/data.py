"""The emoji corpus as tensors: images in memory, captions drawn per step.

Reads ``<corpus>/emoji.jsonl`` (written by ``python -m fewclip.offline prepare``): one
record per base emoji with its readable name, short names, category, subcategory, the
``heldout`` flag and image paths per style. Pretraining uses the styles in
``TRAIN_STYLES`` of the non-held-out emoji only; evaluation uses the unseen styles and the
held-out names.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TRAIN_STYLES = ("google", "twitter")
EVAL_STYLES = ("openmoji", "noto")

#: Caption forms; ``{name}`` is a readable name or short name, ``{sub}`` the subcategory.
CAPTION_TEMPLATES = (
    "{name}",
    "an emoji of {name}.",
    "a {name} emoji.",
    "an icon of {name}.",
    "{name}, a {sub} emoji.",
    "a picture of {name}.",
)
#: The caption used for zero-shot evaluation of names.
EVAL_TEMPLATE = "an emoji of {}."


@dataclass
class Emoji:
    id: str
    name: str
    short_names: list[str]
    category: str
    subcategory: str
    heldout: bool
    images: dict[str, list[str]] = field(default_factory=dict)


def read_corpus(corpus_dir: str | Path) -> list[Emoji]:
    """Parse ``emoji.jsonl``; a missing corpus raises with the command that builds it."""
    path = Path(corpus_dir) / "emoji.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"emoji corpus not found at {path}. Build it with "
            f"`python -m fewclip.offline prepare --data-root {Path(corpus_dir).parent}`."
        )
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out.append(
                    Emoji(
                        id=r["id"],
                        name=r["name"],
                        short_names=list(r.get("short_names", [])),
                        category=r.get("category", ""),
                        subcategory=r.get("subcategory", ""),
                        heldout=bool(r.get("heldout", False)),
                        images={k: list(v) for k, v in r.get("images", {}).items()},
                    )
                )
    return out


def readable(text: str) -> str:
    return text.replace("_", " ").replace("-", " ").strip()


def load_image_tensor(paths: list[Path], size: int = 64) -> torch.Tensor:
    """(N, 3, size, size) uint8 images; RGBA is composited on white."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im).convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = np.asarray(im)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@dataclass
class TrainingSet:
    """Pretraining images (uint8, in memory) grouped by emoji, and caption material."""

    emoji: list[Emoji]
    images: torch.Tensor  # (N, 3, 64, 64) uint8
    image_owner: torch.Tensor  # (N,) index into ``emoji``
    by_emoji: list[torch.Tensor]  # per emoji, indices into ``images``

    def captions(self, emoji_index: int, rng: random.Random) -> str:
        e = self.emoji[emoji_index]
        names = [e.name] + [readable(s) for s in e.short_names]
        template = rng.choice(CAPTION_TEMPLATES)
        return template.format(name=rng.choice(names), sub=readable(e.subcategory))

    def sample_batch(self, batch_size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        """``batch_size`` distinct emoji, one random image (style/variant) and caption each."""
        chosen = rng.sample(range(len(self.emoji)), min(batch_size, len(self.emoji)))
        idx = torch.tensor([int(rng.choice(self.by_emoji[c])) for c in chosen])
        return self.images[idx], [self.captions(c, rng) for c in chosen]


def build_training_set(
    corpus_dir: str | Path, styles: tuple[str, ...] = TRAIN_STYLES
) -> TrainingSet:
    """Every image of the given styles of every non-held-out emoji."""
    corpus_dir = Path(corpus_dir)
    emoji = [e for e in read_corpus(corpus_dir) if not e.heldout]
    paths, owner = [], []
    kept = []
    for e in emoji:
        imgs = [corpus_dir / p for s in styles for p in e.images.get(s, [])]
        if not imgs:
            continue
        kept.append(e)
        paths += imgs
        owner += [len(kept) - 1] * len(imgs)
    owner_t = torch.tensor(owner)
    by_emoji = [torch.nonzero(owner_t == i).flatten() for i in range(len(kept))]
    return TrainingSet(kept, load_image_tensor(paths), owner_t, by_emoji)
