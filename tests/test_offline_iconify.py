"""The SVG emoji styles: resvg rendering of known SVGs, the icon-name matching, and a corpus
built from a fake @iconify-json package."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_offline_corpus import fake_datasource, records, tar_bytes

from fewclip.offline import corpus
from fewclip.offline.corpus import build_corpus
from fewclip.offline.iconify import (
    IconSet,
    SvgRenderer,
    match_icons,
    parse_icon_set,
    read_icon_set,
    shared_char_names,
)

pytest.importorskip("resvg_py", reason="resvg-py (a dependency in pyproject.toml) is missing")

HALF = '<rect x="0" y="0" width="8" height="16" fill="#ff0000"/>'
DISC = '<circle cx="8" cy="8" r="6" fill="#0000ff"/>'


def icon_set(**icons: str) -> IconSet:
    return parse_icon_set(
        json.dumps(
            {"prefix": "t", "icons": {k: {"body": v} for k, v in icons.items()}, "width": 16}
            | {"height": 16, "aliases": {"alias-of-half": {"parent": "half"}}}
        )
    )


def test_known_svg_renders_to_the_expected_pixels():
    """A red left half on a 16-unit view box at 32 px: pixels 0-15 red, 16-31 white; a
    disc of radius 6 units covers pi r^2 of the frame within 2%, centred, on white."""
    s = icon_set(half=HALF, disc=DISC)
    renderer = SvgRenderer(32)
    half = np.asarray(renderer.render(s.svg("half"))).astype(int)
    assert half.shape == (32, 32, 3)
    assert np.abs(half[:, :15] - [255, 0, 0]).max() <= 2
    assert np.abs(half[:, 17:] - [255, 255, 255]).max() <= 2
    disc = np.asarray(renderer.render(s.svg("disc"))).astype(float)
    blue = (255 - disc[..., 0]) / 255  # coverage: white -> 0, blue -> 1
    area = blue.sum() / (32 * 32)
    assert area == pytest.approx(np.pi * 36 / 256, rel=0.02)
    ys, xs = np.mgrid[:32, :32]
    centre = ((ys + 0.5) * blue).sum() / blue.sum(), ((xs + 0.5) * blue).sum() / blue.sum()
    assert centre == pytest.approx((16, 16), abs=0.05)
    assert np.abs(disc[0, 0] - 255).max() <= 1 and np.abs(disc[16, 16] - [0, 0, 255]).max() <= 1
    assert renderer.render(s.svg("disc")).tobytes() == renderer.render(s.svg("disc")).tobytes()


def test_aliases_and_view_box_offsets():
    s = icon_set(half=HALF)
    assert s.svg("alias-of-half") == s.svg("half")
    with pytest.raises(KeyError):
        s.svg("nope")
    shifted = parse_icon_set(
        json.dumps({"icons": {"a": {"body": HALF, "left": 8, "width": 8, "height": 16}}})
    )
    # view box x in [8, 16): only the white right half of the drawing, scaled to fill
    im = np.asarray(SvgRenderer(16).render(shifted.svg("a")))
    assert im.min() >= 250  # (non-square: thumbnail keeps the aspect, all white)


RECORDS = [
    {"id": "2764-FE0F", "name": "heavy black heart", "short_names": ["heart"]},
    {"id": "1F600", "name": "grinning face", "short_names": ["grinning"]},
    {"id": "1F6A1", "name": "aerial tramway", "short_names": ["aerial_tramway"]},
    {"id": "1F1EF-1F1F5", "name": "japan flag", "short_names": ["jp"]},
]


def test_icons_match_by_code_points_shared_slugs_and_names():
    own = IconSet(
        "a", {"red-heart": {"body": ""}, "zzz": {"body": ""}}, chars={"2764": "red-heart"}
    )
    other = IconSet("b", {}, chars={"1f600": "grinning-face-big"})
    shared = shared_char_names([own, other])
    assert shared == {"red-heart": "2764", "grinning-face-big": "1f600"}
    assert match_icons(own, RECORDS, shared) == {"2764-FE0F": "red-heart"}  # fe0f ignored
    names = IconSet(
        "c",
        {
            "grinning-face-big": {"body": ""},  # through another set's chars.json
            "aerialtramway": {"body": ""},  # squashed name (fxemoji)
            "flag-jp": {"body": ""},  # unknown: no match
            "jp": {"body": ""},  # short name
            "japan-flag": {"body": ""},  # name slug, sorts before "jp": wins
        },
    )
    assert match_icons(names, RECORDS, shared) == {
        "1F600": "grinning-face-big",
        "1F6A1": "aerialtramway",
        "1F1EF-1F1F5": "japan-flag",
    }


def fake_iconify(path, prefix: str, icons: dict[str, str], chars=None):
    files = {
        "package/icons.json": json.dumps(
            {"prefix": prefix, "icons": {k: {"body": v} for k, v in icons.items()}}
            | {"width": 16, "height": 16}
        ).encode(),
        "package/info.json": json.dumps({"license": {"spdx": "MIT"}}).encode(),
        "package/chars.json": json.dumps(chars or {}).encode(),
    }
    path.write_bytes(tar_bytes(files))
    return path


def test_corpus_with_svg_styles_and_keywords(tmp_path):
    archives = {
        "google": fake_datasource(tmp_path / "g.tgz", "google"),
        "fxemoji": fake_iconify(
            tmp_path / "fx.tgz", "fxemoji", {"grinningface": DISC, "santa": HALF, "x": HALF}
        ),
        "fluent-flat": fake_iconify(
            tmp_path / "ff.tgz", "fluent-emoji-flat", {"beaming": DISC}, {"1f601": "beaming"}
        ),
        "keywords": tmp_path / "kw.tgz",
    }
    (tmp_path / "kw.tgz").write_bytes(
        tar_bytes(
            {
                "package/en/data.json": json.dumps(
                    [{"hexcode": "1F600", "tags": ["face", "grin"]}]
                ).encode()
            }
        )
    )
    manifest = build_corpus(tmp_path / "data", archives, [], log=lambda m: None)
    recs = records(tmp_path / "data" / corpus.CORPUS_DIR)
    assert recs["1F600"]["images"]["fxemoji"] == ["images/fxemoji/1f600.png"]
    assert recs["1F385"]["images"]["fxemoji"] == ["images/fxemoji/1f385.png"]  # short name
    assert recs["1F601"]["images"]["fluent-flat"] == ["images/fluent-flat/1f601.png"]
    assert "fxemoji" not in recs["1F601"]["images"]
    assert recs["1F600"]["keywords"] == ["face", "grin"] and recs["1F601"]["keywords"] == []
    assert manifest["styles"]["fxemoji"]["role"] == "pretraining"
    assert manifest["styles"]["fluent-flat"]["role"] == "evaluation (unseen style)"
    assert "fluent-flat" in manifest["eval_styles"] and "fxemoji" in manifest["train_styles"]
    assert read_icon_set(archives["fxemoji"]).prefix == "fxemoji"


def test_held_out_styles_are_disjoint_from_pretraining_styles():
    assert not set(corpus.TRAIN_STYLES) & set(corpus.EVAL_STYLES)
    assert set(corpus.STYLE_SOURCES) == set(corpus.STYLES)
    kinds = {corpus.STYLE_KINDS[s] for s in corpus.EVAL_STYLES}
    assert {"monochrome", "flat colour"} <= kinds and any("colour," in k for k in kinds)
    # no design family of a held-out style is in pretraining (openmoji, noto mono, fluent)
    assert not any(s.startswith(("openmoji", "fluent")) for s in corpus.TRAIN_STYLES)
