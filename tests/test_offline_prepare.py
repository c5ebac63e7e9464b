"""``prepare`` end to end on fake packages: built, skipped (no tool), up to date, checksum
errors, and the CLI's exit status. The "noto" font is DejaVu Sans (digits as emoji)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_offline_corpus import DEJAVU, emoji_entry, fake_datasource
from test_offline_tasks import fake_fashion_deb

from fewclip.data import DatasetError, load_dataset
from fewclip.offline import emoji_tasks, image_tasks, prepare, render, sources
from fewclip.offline.corpus import FONTS
from fewclip.offline.tasks import SplitRule

pytestmark = pytest.mark.skipif(not DEJAVU.is_file(), reason="no DejaVuSans.ttf in matplotlib")

DIGITS = [
    emoji_entry(f"{0x30 + d:04X}", f"DIGIT {d}", ["Odd", "Even"][d % 2 == 0], "digit", d)
    for d in range(10)
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Archives in <root>/downloads for google, noto and fashion-mnist; for the rest the
    tools are missing (empty PATH, no pip)."""
    root = tmp_path / "data"
    downloads = root / "downloads"
    downloads.mkdir(parents=True)
    colours = {e["image"]: (20 * i, 100, 200 - 10 * i) for i, e in enumerate(DIGITS)}
    google = fake_datasource(downloads / "google.tgz", "google", DIGITS, colours)
    noto = downloads / "noto.whl"
    with zipfile.ZipFile(noto, "w") as z:
        z.writestr(FONTS["noto"][0], DEJAVU.read_bytes())
    fashion = fake_fashion_deb(downloads / "fashion.deb")
    table = dict(sources.SOURCES)
    for key, path in (("emoji-google", google), ("noto-emoji", noto), ("fashion-mnist", fashion)):
        table[key] = sources.Source(**{**table[key].__dict__, "filename": path.name})
        table[key] = sources.with_sha256(table[key], sha(path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(render, "REFERENCE", "0030")  # digits share one advance
    monkeypatch.setattr(emoji_tasks, "CATEGORY_RULE", SplitRule(0.4, 0.1, 2, 1, 1))
    monkeypatch.setitem(image_tasks.PER_CLASS, "train", 3)
    monkeypatch.setitem(image_tasks.PER_CLASS, "val", 1)
    monkeypatch.setitem(image_tasks.PER_CLASS, "test", 2)
    return root, table


def run(root, table, **kw):
    log: list[str] = []
    outcomes = prepare.prepare(root, sources=table, log=log.append, **kw)
    return {o.group: o for o in outcomes}, "\n".join(log)


def test_prepare_builds_what_it_can_and_skips_the_rest(fake_sources):
    root, table = fake_sources
    got, log = run(root, table)
    assert got["corpus"].status == "built"
    assert got["emoji"].status == "built"
    assert got["fashion_mnist"].status == "built"
    assert got["animal_mnist"].status == "skipped"
    assert "pip is not installed" in got["animal_mnist"].message
    assert got["tuxpaint"].status == "skipped"
    assert "`apt-get` is not on PATH" in got["tuxpaint"].message
    assert "twitter" in log and "openmoji" in log  # styles left out, said so

    styles = got["corpus"].details
    assert set(styles) == {"google", "noto"}
    assert styles["noto"]["base"] == 10 and styles["google"]["images"] == 10
    with Image.open(root / "emoji-corpus/images/noto/0034.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
        assert im.getpixel((0, 0)) == (255, 255, 255) and im.convert("L").getextrema()[0] < 64

    names = load_dataset("emoji_noto_name", root)
    assert names.num_classes == 10 and names.classnames[3] == "digit 3"
    category = load_dataset("emoji_noto_category", root)
    assert category.classnames == ["even", "odd"]
    for missing in ("emoji_openmoji_name", "emoji_unseen_name"):
        with pytest.raises(DatasetError, match="--only emoji"):
            load_dataset(missing, root)
    with pytest.raises(DatasetError, match="--only animal_mnist"):
        load_dataset("animal_mnist", root)
    assert len(load_dataset("fashion_mnist", root).test) == 20

    again, _ = run(root, table)
    assert {g: o.status for g, o in again.items()} == {
        "corpus": "up to date",
        "emoji": "up to date",
        "fashion_mnist": "up to date",
        "animal_mnist": "skipped",
        "tuxpaint": "skipped",
    }
    forced, _ = run(root, table, only=["fashion_mnist"], force=True)
    assert forced["fashion_mnist"].status == "built" and set(forced) == {"fashion_mnist"}
    reseeded, _ = run(root, table, only=["emoji"], seed=7)
    assert reseeded["emoji"].status == "built"


def test_a_tampered_archive_is_an_error_and_the_cli_fails(fake_sources, monkeypatch, capsys):
    root, table = fake_sources
    archive = root / "downloads" / "fashion.deb"
    archive.write_bytes(archive.read_bytes() + b"tampered")
    got, _ = run(root, table, only=["fashion_mnist"])
    assert got["fashion_mnist"].status == "error"
    assert "sha256" in got["fashion_mnist"].message

    monkeypatch.setattr(prepare, "SOURCES", table)
    status = prepare.main(["prepare", "--data-root", str(root), "--only", "fashion_mnist"])
    assert status == 1
    assert "error" in capsys.readouterr().out
    status = prepare.main(["prepare", "--data-root", str(root), "--only", "tuxpaint"])
    assert status == 0  # skipped is not an error
    assert "--only tuxpaint" in capsys.readouterr().out


def test_list_shows_prepared_and_missing_tasks(fake_sources, capsys):
    root, table = fake_sources
    run(root, table, only=["fashion_mnist"])
    assert prepare.main(["list", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "10 classes, train 30, val 10, test 20" in out
    assert "tuxpaint_photos" in out and "missing" in out


def test_unknown_group_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown group"):
        prepare.prepare(tmp_path, only=["imagenet"], log=lambda m: None)


def test_nothing_is_fetched_on_import_or_read(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(DatasetError):
        load_dataset("emoji_openmoji_subcategory", tmp_path)
    assert calls == [] and not (tmp_path / "downloads").exists()
