"""Emoji styles from the ``@iconify-json/*`` npm packages: SVG bodies rendered with resvg.

Each package holds one icon set as ``package/icons.json`` (``{"icons": {name: {"body": SVG
markup, "width"?, "height"?, "left"?, "top"?}}, "aliases": {...}, "width", "height"}``),
``package/info.json`` (title, author, licence) and, for some sets, ``package/chars.json``
(code points -> icon name). Icon names are slugs of the Unicode names ("grinning-face",
"waving-hand-medium"), so an icon is matched to a corpus emoji (:func:`match_icons`):

1. through the set's own ``chars.json`` (code points, ``fe0f`` ignored);
2. through the ``chars.json`` of the other emoji sets (the slugs are shared across sets);
3. through the slug of the emoji's name or short names ("flag-japan", "jp"), then through
   the name with every non-alphanumeric removed ("aerialtramway", fxemoji's spelling).

Several icons matching one emoji: the first (sorted by name) wins, so the match is
deterministic. Rendering (:class:`SvgRenderer`) uses ``resvg-py`` (the resvg library, pure
Rust, no system fonts are consulted: emoji SVGs draw shapes, not text) at the corpus frame
size, the icon's view box scaled to fill the frame, anti-aliased, then composited on white.
resvg was chosen over cairosvg by measurement: several times faster on four icon sets
(docs/design/speed.md), mean absolute difference between the two below 1.1 grey levels.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .sources import SourceError, SourceUnavailable, iter_archive

#: members of an @iconify-json package read here
MEMBERS = ("package/icons.json", "package/info.json", "package/chars.json")


@dataclass
class IconSet:
    """One @iconify-json package: icons, aliases, default size, code-point map, info."""

    prefix: str
    icons: dict[str, dict]
    aliases: dict[str, dict] = field(default_factory=dict)
    width: float = 16.0
    height: float = 16.0
    chars: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def resolve(self, name: str) -> dict | None:
        """The icon ``name`` (following aliases to their parent), or None."""
        seen = set()
        while name not in self.icons:
            alias = self.aliases.get(name)
            if alias is None or name in seen:
                return None
            seen.add(name)
            name = alias["parent"]
        return self.icons[name]

    def svg(self, name: str) -> str:
        """A standalone SVG document of icon ``name`` (its view box, no fixed size)."""
        icon = self.resolve(name)
        if icon is None:
            raise KeyError(f"{self.prefix}: no icon {name!r}")
        w = icon.get("width", self.width)
        h = icon.get("height", self.height)
        x, y = icon.get("left", 0), icon.get("top", 0)
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{x} {y} {w} {h}" width="{w}" height="{h}">{icon["body"]}</svg>'
        )


def parse_icon_set(icons_json: bytes | str, info: bytes | str | None = None, chars=None) -> IconSet:
    d = json.loads(icons_json)
    return IconSet(
        prefix=d.get("prefix", ""),
        icons=d["icons"],
        aliases=d.get("aliases", {}) or {},
        width=float(d.get("width", 16)),
        height=float(d.get("height", 16)),
        chars=json.loads(chars) if chars else {},
        info=json.loads(info) if info else {},
    )


def read_icon_set(archive: str | Path) -> IconSet:
    """The icon set of an ``@iconify-json/<set>`` npm archive (streamed, not unpacked)."""
    got = dict(iter_archive(archive, lambda n: n in MEMBERS))
    if "package/icons.json" not in got:
        raise SourceError(f"{archive}: no package/icons.json (not an @iconify-json package?)")
    return parse_icon_set(
        got["package/icons.json"], got.get("package/info.json"), got.get("package/chars.json")
    )


def norm_code(code: str) -> str:
    """``"2764-FE0F"`` -> ``"2764"``: lower case, variation selector 16 dropped."""
    return "-".join(p for p in code.lower().split("-") if p and p != "fe0f")


def slug(text: str) -> str:
    """``"Japan Flag"`` -> ``"japan-flag"`` (iconify's spelling of names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def squash(text: str) -> str:
    """``"aerial tramway"`` -> ``"aerialtramway"`` (fxemoji's spelling)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def shared_char_names(sets: Iterable[IconSet]) -> dict[str, str]:
    """icon name -> normalised code points, from every set's ``chars.json`` (first wins)."""
    out: dict[str, str] = {}
    for s in sets:
        for code, name in sorted(s.chars.items()):
            out.setdefault(name, norm_code(code))
    return out


def match_icons(
    icon_set: IconSet, records: list[dict], shared: dict[str, str] | None = None
) -> dict[str, str]:
    """Emoji id -> icon name for every corpus emoji this set draws (see the module doc).

    ``records`` are corpus records with ``id``, ``name`` and ``short_names``; ``shared`` is
    :func:`shared_char_names` of all emoji sets at hand.
    """
    by_code = {norm_code(r["id"]): r["id"] for r in records}
    by_name: dict[str, str] = {}
    for key in (slug, squash):
        for r in records:
            for n in [r["name"], *r.get("short_names", [])]:
                by_name.setdefault(key(n), r["id"])
    own = {name: norm_code(code) for code, name in sorted(icon_set.chars.items())}
    shared = shared or {}
    out: dict[str, str] = {}
    for name in sorted(set(icon_set.icons) | set(icon_set.aliases)):
        code = own.get(name) or shared.get(name)
        eid = by_code.get(code) if code else None
        if eid is None:
            eid = by_name.get(name) or by_name.get(squash(name))
        if eid is not None and eid not in out:
            out[eid] = name
    return out


class SvgRenderer:
    """SVG markup -> ``size`` x ``size`` RGB picture on white, with resvg (deterministic)."""

    def __init__(self, size: int) -> None:
        try:
            import resvg_py  # imported when used: reading tasks never needs it
        except ImportError as e:
            raise SourceUnavailable(
                "the SVG emoji styles need the resvg-py renderer: `pip install resvg-py`"
            ) from e
        self._render = resvg_py.svg_to_bytes
        self.size = size

    def render(self, svg: str) -> Image.Image:
        png = bytes(self._render(svg_string=svg, width=self.size, height=self.size))
        with Image.open(io.BytesIO(png)) as im:
            im = im.convert("RGBA")
        if im.size != (self.size, self.size):  # a non-square view box keeps its aspect
            frame = Image.new("RGBA", (self.size, self.size), (0, 0, 0, 0))
            im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            frame.paste(im, ((self.size - im.width) // 2, (self.size - im.height) // 2))
            im = frame
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
