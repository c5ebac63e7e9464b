"""The emoji corpus from a fake emoji-datasource package: compositing, names, held-out rule,
duplicates, the jsonl and manifest; font rendering with a font matplotlib ships."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fewclip.offline import corpus, render
from fewclip.offline.corpus import build_corpus, is_heldout, parse_emoji_json

DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def emoji_entry(unified, name, category, subcategory, order, short=None, variants=()):
    short = short or name.lower().replace(" ", "_")
    entry = {
        "unified": unified,
        "name": name,
        "short_name": short,
        "short_names": [short],
        "category": category,
        "subcategory": subcategory,
        "sort_order": order,
        "image": unified.lower() + ".png",
        "has_img_google": True,
        "has_img_twitter": True,
    }
    if variants:
        entry["skin_variations"] = {
            v.split("-")[-1]: {"unified": v, "image": v.lower() + ".png"} for v in variants
        }
    return entry


def png(colour, alpha=255, size=64, hole=True) -> bytes:
    """A coloured RGBA square; top-left pixel fully transparent, next one half-transparent."""
    arr = np.zeros((size, size, 4), np.uint8)
    arr[..., :3] = colour
    arr[..., 3] = alpha
    if hole:
        arr[0, 0] = (255, 0, 0, 0)
        arr[0, 1] = (0, 0, 0, 128)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


FAKE_EMOJI = [
    emoji_entry("1F600", "GRINNING FACE", "Smileys & Emotion", "face-smiling", 1),
    emoji_entry("1F601", "BEAMING FACE", "Smileys & Emotion", "face-smiling", 2),
    emoji_entry(
        "1F385",
        "FATHER CHRISTMAS",
        "People & Body",
        "person-fantasy",
        3,
        short="santa",
        variants=("1F385-1F3FB", "1F385-1F3FC"),
    ),
    emoji_entry("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "skin-tone", 4),
    emoji_entry("1F3C3-200D-2640-FE0F", "WOMAN RUNNING", "People & Body", "person-activity", 5),
    emoji_entry("1F3C3", "RUNNER", "People & Body", "person-activity", 6),
    emoji_entry("1F1EA-1F1E6", "Ceuta & Melilla Flag", "Flags", "country-flag", 7),
    emoji_entry("1F1EA-1F1F8", "Spain Flag", "Flags", "country-flag", 8),
    emoji_entry("1F935", "MAN IN TUXEDO", "People & Body", "person-role", 9, "person_in_tuxedo"),
    emoji_entry("1F935-200D-2642-FE0F", "MAN IN TUXEDO", "People & Body", "person-role", 10),
]

#: image file -> colour; identical colours give identical pictures
FAKE_COLOURS = {
    "1f600.png": (250, 200, 0),
    "1f601.png": (240, 180, 10),
    "1f385.png": (200, 0, 0),
    "1f385-1f3fb.png": (210, 150, 120),
    "1f385-1f3fc.png": (200, 0, 0),  # same as the base: dropped
    "1f3fb.png": (230, 190, 160),
    "1f3c3-200d-2640-fe0f.png": (0, 90, 200),  # same as the runner: the runner keeps it
    "1f3c3.png": (0, 90, 200),
    "1f1ea-1f1e6.png": (170, 20, 30),  # Ceuta & Melilla = Spain: ambiguous, both dropped
    "1f1ea-1f1f8.png": (170, 20, 30),
    "1f935.png": (20, 20, 20),
    "1f935-200d-2642-fe0f.png": (30, 30, 30),
}


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fake_datasource(
    path: Path, style: str, entries=None, colours=None, invert: bool = False
) -> Path:
    """An emoji-datasource-<style> npm tarball: package/emoji.json + 64 px PNGs."""
    entries = FAKE_EMOJI if entries is None else entries
    colours = FAKE_COLOURS if colours is None else colours
    files = {"package/emoji.json": json.dumps(entries).encode()}
    for name, colour in colours.items():
        c = tuple(255 - v for v in colour) if invert else colour
        files[f"package/img/{style}/64/{name}"] = png(c)
    path.write_bytes(tar_bytes(files))
    return path


@pytest.fixture
def built(tmp_path):
    archives = {
        "google": fake_datasource(tmp_path / "g.tgz", "google"),
        "twitter": fake_datasource(tmp_path / "t.tgz", "twitter", invert=True),
    }
    sources = [{"key": "emoji-google", "sha256": "x"}, {"key": "emoji-twitter", "sha256": "y"}]
    manifest = build_corpus(tmp_path / "data", archives, sources, log=lambda m: None)
    return tmp_path / "data" / corpus.CORPUS_DIR, manifest


def records(corpus_dir: Path) -> dict[str, dict]:
    lines = (corpus_dir / "emoji.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_heldout_rule_is_the_documented_sha1_rule():
    for i in ("1F600", "1F601", "1F914", "1F385", "2764-FE0F", "1F60E"):
        expected = int(hashlib.sha1(i.encode()).hexdigest(), 16) % 10 == 0
        assert is_heldout(i) == expected
    assert [is_heldout(i) for i in ("1F601", "1F914", "1F60E")] == [True, True, True]
    assert [is_heldout(i) for i in ("1F600", "1F385", "2764-FE0F")] == [False, False, False]
    ids = [f"{0x1F000 + k:X}" for k in range(2000)]
    assert 0.08 < sum(map(is_heldout, ids)) / len(ids) < 0.12


def test_names_are_lower_case_unique_and_components_are_excluded():
    meta = parse_emoji_json(json.dumps(FAKE_EMOJI))
    names = {e.id: e.name for e in meta}
    assert "1F3FB" not in names
    assert names["1F600"] == "grinning face"
    assert names["1F1EA-1F1F8"] == "spain flag"
    assert names["1F935"] == "person in tuxedo"
    assert names["1F935-200D-2642-FE0F"] == "man in tuxedo"
    assert len(set(names.values())) == len(names)
    assert [e.id for e in meta][:2] == ["1F600", "1F601"]  # sort order


def test_images_are_rgb_64_composited_on_white(built):
    corpus_dir, _ = built
    with Image.open(corpus_dir / "images" / "google" / "1f600.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)
        assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
        assert all(abs(v - 127) <= 2 for v in im.getpixel((1, 0)))  # half black -> grey
        assert im.getpixel((10, 10)) == (250, 200, 0)


def test_jsonl_fields_variants_and_duplicates(built):
    corpus_dir, manifest = built
    recs = records(corpus_dir)
    assert "1F3FB" not in recs
    r = recs["1F385"]
    assert set(r) == {
        "id",
        "name",
        "short_names",
        "category",
        "subcategory",
        "keywords",
        "heldout",
        "images",
    }
    assert r["keywords"] == []  # no emojibase archive given
    assert r["name"] == "father christmas" and r["short_names"] == ["santa"]
    assert r["category"] == "People & Body" and r["subcategory"] == "person-fantasy"
    # base first, then the variant that differs from it; the identical one is dropped
    assert r["images"]["google"] == ["images/google/1f385.png", "images/google/1f385-1f3fb.png"]
    for rec in recs.values():
        assert rec["heldout"] == is_heldout(rec["id"])
        for paths in rec["images"].values():
            assert all((corpus_dir / p).is_file() for p in paths)
    assert recs["1F601"]["heldout"] is True
    # the runner keeps its picture, the ZWJ sequence drawn the same loses it
    assert recs["1F3C3"]["images"]["google"] == ["images/google/1f3c3.png"]
    assert recs["1F3C3-200D-2640-FE0F"]["images"] == {}
    # two flags with one picture: ambiguous, neither keeps it
    assert recs["1F1EA-1F1F8"]["images"] == {} and recs["1F1EA-1F1E6"]["images"] == {}
    g = manifest["styles"]["google"]
    assert g["base"] == 6 and g["variants"] == 1 and g["images"] == 7
    assert g["duplicates_dropped"] == 1 and g["ambiguous_dropped"] == 2
    assert g["variants_dropped_identical"] == 1
    assert manifest["heldout"] == 1 and "sha1" in manifest["heldout_rule"]
    assert manifest["excluded_categories"] == ["Component"]
    on_disk = json.loads((corpus_dir / "manifest.json").read_text())
    assert on_disk["styles"]["twitter"]["images"] == 7


def test_build_is_deterministic(tmp_path, built):
    corpus_dir, _ = built
    archives = {"google": fake_datasource(tmp_path / "g2.tgz", "google")}
    build_corpus(tmp_path / "again", archives, [], log=lambda m: None)
    other = tmp_path / "again" / corpus.CORPUS_DIR
    a = [(r["id"], r["images"].get("google")) for r in records(corpus_dir).values()]
    b = [(r["id"], r["images"].get("google")) for r in records(other).values()]
    assert a == b
    for name in os.listdir(corpus_dir / "images" / "google"):
        same = (corpus_dir / "images/google" / name).read_bytes()
        assert same == (other / "images/google" / name).read_bytes()


@pytest.mark.skipif(not DEJAVU.is_file(), reason="no DejaVuSans.ttf in matplotlib")
def test_font_rendering_is_centred_on_white():
    # digits share one advance in DejaVu Sans, as emoji do in an emoji font
    r = render.FontRenderer(DEJAVU.read_bytes(), colour=False, reference="0030")
    assert r.covers("0") and r.covers("8")
    assert not r.covers("\U000f0000")  # private use: .notdef
    assert not r.covers("00")  # two glyphs are not one emoji
    r.calibrate(["0", "1", "4", "8"])
    im = r.render("4")
    assert im.mode == "RGB" and im.size == (64, 64)
    arr = np.asarray(im)
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 255).all()
    ys, xs = np.nonzero(arr.min(axis=2) < 128)
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 1.5
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1.5
    assert max(xs.max() - xs.min(), ys.max() - ys.min()) <= render.FILL + 1
