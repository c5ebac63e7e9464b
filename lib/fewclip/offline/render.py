"""Emoji rendered from a font: 64x64 RGB on white, centred, one scale per font.

Pillow shapes the code-point sequence with raqm (ligatures for ZWJ sequences, flags, keycaps
and skin tones) when available, and draws colour glyphs (COLRv0, as OpenMoji's font has)
with ``embedded_color=True``. A sequence counts as *covered* when it shapes to a single
glyph advance and does not draw the font's ``.notdef`` box. Identical pictures (a mono font
drawing "woman running" like "person running", or skin tones it cannot show) are dropped
later by the corpus builder.

All glyphs of a font share one scale: the one at which 95% of the covered glyphs' ink fits
in ``FILL`` of the 64 px frame (the rest are shrunk to fit), so the font's own relative
sizes survive; the ink is centred. Drawing happens at ``SUPERSAMPLE`` x the final size and is
reduced with a Lanczos filter.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

SIZE = 64
SUPERSAMPLE = 4
#: Largest ink side, in px of the final image, for 95% of a font's glyphs.
FILL = 60
#: Font size of the measuring pass (ink sizes scale linearly with it).
PROBE_SIZE = 64
#: A sequence every emoji font has: its advance is the advance of one emoji glyph.
REFERENCE = "1F600"


def sequence_text(unified: str) -> str:
    """``"1F469-200D-1F52C"`` -> the string of those code points."""
    return "".join(chr(int(part, 16)) for part in unified.split("-"))


def _load_font(font_bytes: bytes, size: int) -> ImageFont.FreeTypeFont:
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(io.BytesIO(font_bytes), size, layout_engine=layout)


def _draw(font: ImageFont.FreeTypeFont, text: str, canvas: int, colour: bool) -> Image.Image:
    """RGBA drawing of ``text`` centred on a transparent square canvas."""
    im = Image.new("RGBA", (canvas, canvas), (255, 255, 255, 0))
    ImageDraw.Draw(im).text(
        (canvas // 2, canvas // 2),
        text,
        font=font,
        fill=(0, 0, 0, 255),
        anchor="mm",
        embedded_color=colour,
    )
    return im


def _ink_box(im: Image.Image) -> tuple[int, int, int, int] | None:
    return im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()


@dataclass
class FontRenderer:
    """Renders sequences of one font; ``colour`` draws embedded colours (COLR) when True.

    ``reference`` (default :data:`REFERENCE`) is a unified code whose advance is the width
    of one glyph of this font.
    """

    font_bytes: bytes
    colour: bool = True
    reference: str | None = None

    def __post_init__(self) -> None:
        self._probe = _load_font(self.font_bytes, PROBE_SIZE)
        self._advance = self._probe.getlength(sequence_text(self.reference or REFERENCE))
        notdef = _draw(self._probe, "\U0010fffd", 2 * PROBE_SIZE, self.colour)
        self._notdef = notdef.tobytes()
        self._font: ImageFont.FreeTypeFont | None = None
        self._scale: float | None = None
        self._covered: dict[str, bool] = {}

    def covers(self, text: str) -> bool:
        """One glyph advance, not the ``.notdef`` box, some ink."""
        if text not in self._covered:
            self._covered[text] = self._check(text)
        return self._covered[text]

    def _check(self, text: str) -> bool:
        if self._advance <= 0:
            return False
        length = self._probe.getlength(text)
        if abs(length - self._advance) > 0.05 * self._advance:
            return False
        im = _draw(self._probe, text, 2 * PROBE_SIZE, self.colour)
        return im.tobytes() != self._notdef and _ink_box(im) is not None

    def calibrate(self, texts: Sequence[str]) -> float:
        """Choose the font size at which 95% of these glyphs' ink fits in ``FILL`` px."""
        sides = []
        for text in texts:
            box = _ink_box(_draw(self._probe, text, 2 * PROBE_SIZE, self.colour))
            if box is not None:
                sides.append(max(box[2] - box[0], box[3] - box[1]))
        p95 = float(np.percentile(sides, 95)) if sides else PROBE_SIZE
        self._scale = FILL / p95
        size = max(1, round(PROBE_SIZE * self._scale * SUPERSAMPLE))
        self._font = _load_font(self.font_bytes, size)
        return PROBE_SIZE * self._scale

    def render(self, text: str) -> Image.Image | None:
        """64x64 RGB on white, ink centred; None if nothing is drawn."""
        if self._font is None:
            self.calibrate([text])
        big = SIZE * SUPERSAMPLE
        im = _draw(self._font, text, 2 * big, self.colour)
        box = _ink_box(im)
        if box is None:
            return None
        ink = im.crop(box)
        limit = FILL * SUPERSAMPLE
        if max(ink.size) > limit:
            factor = limit / max(ink.size)
            new = (max(1, round(ink.width * factor)), max(1, round(ink.height * factor)))
            ink = ink.resize(new, Image.Resampling.LANCZOS)
        sheet = Image.new("RGBA", (big, big), (255, 255, 255, 255))
        sheet.alpha_composite(ink, ((big - ink.width) // 2, (big - ink.height) // 2))
        return sheet.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
