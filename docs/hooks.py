"""MkDocs hooks: publish files that live outside ``docs/`` (model cards, data notes, the
changelog, the HTML reports and the claims ledger) and make repository-relative links
between them work in the site.

Each entry of :data:`OUTSIDE` maps a path in the repository to its path in the site; a
Markdown link written for the repository (``../data/README.md`` from ``docs/data.md``) is
rewritten to the page's path in the site, so the same file reads right on disk and in the
site, and ``mkdocs build --strict`` still fails on a link that leads nowhere. A link to a
source file that the site does not publish (``../lib/fewclip/sweep.py``) becomes its path
in code style.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

#: repository path -> site path (files outside docs/ published with the site)
OUTSIDE = {
    "lib/fewclip/weights/tiny-emoji-rn.md": "models/tiny-emoji-rn.md",
    "lib/fewclip/weights/tiny-emoji-vit.md": "models/tiny-emoji-vit.md",
    "data/README.md": "data/README.md",
    "data/OFFLINE.md": "data/OFFLINE.md",
    "data/claims.csv": "data/claims.csv",
    "CHANGELOG.md": "changelog.md",
    "CONTRIBUTING.md": "contributing.md",
}
#: folders published as they are (the HTML reports and their figures)
OUTSIDE_TREES = {"reports": "reports"}
TREE_SUFFIXES = {".html", ".png", ".svg", ".css", ".js", ".csv", ".json", ".jpg"}

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s#]+)((?:#[^)\s]*)?)\)")


def _published() -> dict[str, str]:
    found = {repo: site for repo, site in OUTSIDE.items() if (ROOT / repo).is_file()}
    for repo_dir, site_dir in OUTSIDE_TREES.items():
        for path in sorted((ROOT / repo_dir).rglob("*")):
            if path.is_file() and path.suffix in TREE_SUFFIXES:
                rel = path.relative_to(ROOT / repo_dir).as_posix()
                found[f"{repo_dir}/{rel}"] = f"{site_dir}/{rel}"
    return found


def on_files(files: Files, config) -> Files:
    for repo, site in _published().items():
        files.append(File.generated(config, site, abs_src_path=str(ROOT / repo)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Rewrite links written relative to a file's place in the repository."""
    site_of = _published()
    repo_of = {site: repo for repo, site in site_of.items()}
    src = page.file.src_uri
    repo_path = repo_of.get(src, f"docs/{src}")

    def rewrite(match: re.Match) -> str:
        text, target, anchor = match.groups()
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return match.group(0)
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target))
        site = site_of.get(in_repo)
        if site is None and in_repo.startswith("docs/"):
            site = in_repo[len("docs/") :]
        if site is None:
            if (ROOT / in_repo).exists():  # a source file: named, not linked, in the site
                return text if f"`{in_repo}`" in text else f"{text} (`{in_repo}`)"
            return match.group(0)  # leads nowhere: --strict fails on it
        new = posixpath.relpath(site, posixpath.dirname(src) or ".")
        return f"[{text}]({new}{anchor})"

    return LINK.sub(rewrite, markdown)
