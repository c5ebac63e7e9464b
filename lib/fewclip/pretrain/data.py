"""The emoji corpus as tensors: images in memory, captions drawn per step.

Reads ``<corpus>/emoji.jsonl`` (written by ``python -m fewclip.offline prepare``): one
record per base emoji with its readable name, short names, category, subcategory, the
``heldout`` flag, CLDR keywords and image paths per style. Pretraining uses the styles in
the corpus's ``TRAIN_STYLES`` of the non-held-out emoji only (:func:`build_training_set`
refuses any other style); evaluation uses the held-out styles and the held-out names.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..offline.corpus import EVAL_STYLES, TRAIN_STYLES
from ..offline.emoji_tasks import readable_category, readable_subcategory

__all__ = ["EVAL_STYLES", "TRAIN_STYLES", "build_caption", "build_training_set", "read_corpus"]

#: The styles of the version-1 corpus (the checkpoints committed before the multi-style one).
V1_TRAIN_STYLES = ("google", "twitter")

#: Caption forms; ``{name}`` is a readable name or short name, ``{sub}`` the subcategory.
CAPTION_TEMPLATES = (
    "{name}",
    "an emoji of {name}.",
    "a {name} emoji.",
    "an icon of {name}.",
    "{name}, a {sub} emoji.",
    "a picture of {name}.",
)
#: Extra forms used (with ``keyword_p``) when the emoji has CLDR keywords; ``{kw}`` is one to
#: three of them, ``{cat}`` the category.
KEYWORD_TEMPLATES = (
    "{name}: {kw}.",
    "an emoji of {name}, {kw}.",
    "{kw}",
    "a {cat} emoji of {name}.",
)
#: Forms of a group caption (with ``group_p``): the name templates without the name, ``{group}``
#: the emoji's subcategory or category (as the few-shot tasks' class names spell them).
GROUP_TEMPLATES = (
    "{group}",
    "an emoji of {group}.",
    "a {group} emoji.",
    "an icon of {group}.",
    "a picture of {group}.",
)
#: The caption used for zero-shot evaluation of names.
EVAL_TEMPLATE = "an emoji of {}."
#: The checkpoint's own words (written beside it, see :class:`fewclip.backbones.PromptWords`):
#: the evaluation caption and its words before the name, the init phrase of prompt learners.
PROMPT_WORDS = {"template": EVAL_TEMPLATE, "init": EVAL_TEMPLATE.split(" {}")[0]}


@dataclass
class Emoji:
    id: str
    name: str
    short_names: list[str]
    category: str
    subcategory: str
    heldout: bool
    images: dict[str, list[str]] = field(default_factory=dict)
    keywords: list[str] = field(default_factory=list)


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
                        keywords=list(r.get("keywords", [])),
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


def group_name(e: Emoji, level: str) -> str:
    """``e``'s subcategory (``level="subcategory"``) or category, spelled as the offline
    tasks spell their classes: "person fantasy", "people and body"."""
    if level == "subcategory":
        return readable_subcategory(e.subcategory)
    return readable_category(e.category)


def build_caption(
    e: Emoji,
    rng: random.Random,
    keyword_p: float = 0.0,
    max_keywords: int = 3,
    group_p: float = 0.0,
    group_category_share: float = 1 / 3,
) -> str:
    """One random caption of emoji ``e``.

    With probability ``group_p`` (drawn first, and only when ``group_p > 0``, so earlier
    recipes draw what they drew): a group caption, a template of :data:`GROUP_TEMPLATES` with
    the category (a ``group_category_share`` of them, by default one in three; 0: the
    subcategory only) or the subcategory, no name; several emoji of a batch
    may then share a caption (the loss counts them as positives of each other,
    :func:`fewclip.pretrain.train.clip_loss`). Otherwise, with probability ``1 - keyword_p``
    (or when ``e`` has no keywords): a random template of
    :data:`CAPTION_TEMPLATES` with the name or a short name (made readable) and the
    subcategory. Otherwise a template of :data:`KEYWORD_TEMPLATES` with one to
    ``max_keywords`` distinct keywords (joined by ", ") and the category in lower case.
    """
    if group_p > 0 and rng.random() < group_p:
        # drawn as "subcategory below 1 - share", so the 0.05 / 0.2 runs' draws are kept
        level = "subcategory" if rng.random() < 1 - group_category_share else "category"
        return rng.choice(GROUP_TEMPLATES).format(group=group_name(e, level))
    names = [e.name] + [readable(s) for s in e.short_names]
    if keyword_p <= 0:  # the version-1 recipe's draws, in its order: template, then name
        template = rng.choice(CAPTION_TEMPLATES)
        return template.format(name=rng.choice(names), sub=readable(e.subcategory))
    name = rng.choice(names)  # the version-2 recipe's order (the committed checkpoints)
    if e.keywords and rng.random() < keyword_p:
        k = rng.randint(1, min(max_keywords, len(e.keywords)))
        kw = ", ".join(rng.sample(e.keywords, k))
        cat = " ".join(e.category.replace("&", "and").lower().split())
        return rng.choice(KEYWORD_TEMPLATES).format(name=name, kw=kw, cat=cat)
    return rng.choice(CAPTION_TEMPLATES).format(name=name, sub=readable(e.subcategory))


@dataclass
class TrainingSet:
    """Pretraining images (uint8, in memory) grouped by emoji and style, and caption material.

    ``sampling="style"`` (the multi-style recipe) draws a style of the emoji uniformly, then
    an image of it, so styles with skin-tone variants do not dominate; ``"image"`` (the
    version-1 recipe) draws uniformly among all the emoji's images.
    """

    emoji: list[Emoji]
    images: torch.Tensor  # (N, 3, 64, 64) uint8
    image_owner: torch.Tensor  # (N,) index into ``emoji``
    by_emoji: list[torch.Tensor]  # per emoji, indices into ``images``
    by_style: list[list[list[int]]] = field(default_factory=list)  # per emoji, per style
    sampling: str = "image"
    keyword_p: float = 0.0
    group_p: float = 0.0
    group_category_share: float = 1 / 3

    def captions(self, emoji_index: int, rng: random.Random) -> str:
        return build_caption(
            self.emoji[emoji_index],
            rng,
            self.keyword_p,
            group_p=self.group_p,
            group_category_share=self.group_category_share,
        )

    def sample_batch(self, batch_size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        """``batch_size`` distinct emoji, one random image (style/variant) and caption each."""
        chosen = rng.sample(range(len(self.emoji)), min(batch_size, len(self.emoji)))
        if self.sampling == "style":
            idx = torch.tensor([rng.choice(rng.choice(self.by_style[c])) for c in chosen])
        else:
            idx = torch.tensor([int(rng.choice(self.by_emoji[c])) for c in chosen])
        return self.images[idx], [self.captions(c, rng) for c in chosen]


def build_training_set(
    corpus_dir: str | Path,
    styles: tuple[str, ...] = TRAIN_STYLES,
    sampling: str = "image",
    keyword_p: float = 0.0,
    group_p: float = 0.0,
    group_category_share: float = 1 / 3,
) -> TrainingSet:
    """Every image of the given styles of every non-held-out emoji.

    Only styles of the corpus's ``TRAIN_STYLES`` are accepted: a held-out style never
    reaches pretraining (ValueError otherwise).
    """
    bad = [s for s in styles if s not in TRAIN_STYLES]
    if bad:
        raise ValueError(
            f"styles {bad} are held out of pretraining; choose among {', '.join(TRAIN_STYLES)}"
        )
    if sampling not in ("image", "style"):
        raise ValueError(f"sampling must be 'image' or 'style', not {sampling!r}")
    if not 0 <= group_category_share <= 1:
        raise ValueError(f"group_category_share must be in [0, 1], not {group_category_share}")
    corpus_dir = Path(corpus_dir)
    emoji = [e for e in read_corpus(corpus_dir) if not e.heldout]
    paths, owner, by_style = [], [], []
    kept = []
    for e in emoji:
        groups = [[corpus_dir / p for p in e.images.get(s, [])] for s in styles if e.images.get(s)]
        if not groups:
            continue
        kept.append(e)
        start = len(paths)
        per_style = []
        for g in groups:
            per_style.append(list(range(start, start + len(g))))
            start += len(g)
            paths += g
        by_style.append(per_style)
        owner += [len(kept) - 1] * (start - len(owner))
    owner_t = torch.tensor(owner)
    by_emoji = [torch.tensor([i for g in gs for i in g]) for gs in by_style]
    return TrainingSet(
        kept,
        load_image_tensor(paths),
        owner_t,
        by_emoji,
        by_style,
        sampling,
        keyword_p,
        group_p,
        group_category_share,
    )
