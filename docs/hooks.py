"""MkDocs hooks: publish files that live outside ``docs/`` (model cards, data notes, the
changelog, the HTML reports and the claims ledger) and make repository-relative links
between them work in the site.

Each entry of :data:`OUTSIDE` maps a path in the repository to its path in the site; a
Markdown link written for the repository (``../data/README.md`` from ``docs/data.md``) is
rewritten to the page's path in the site, so the same file reads right on disk and in the
site, and ``mkdocs build --strict`` still fails on a link that leads nowhere. A link to a
source file that the site does not publish (``../lib/fewclip/sweep.py``) becomes its path
in code style. ``<!-- options NAME -->`` (or ``all``) in a page becomes the table of that
method's options, types, defaults and their source comments, read from the source.
"""

from __future__ import annotations

import ast
import io
import posixpath
import re
import tokenize
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


OPTIONS = re.compile(r"<!-- options (\S+) -->")
LIB = ROOT / "lib" / "fewclip"


def _dataclass_fields(cls: ast.ClassDef, comments: dict[int, str]) -> list[tuple[str, ...]]:
    """(name, type, default, comment) of each annotated field of a class body, in order."""
    rows = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            default = ast.unparse(stmt.value) if stmt.value is not None else ""
            note = comments.get(stmt.end_lineno, "")
            rows.append((stmt.target.id, ast.unparse(stmt.annotation), default, note))
    return rows


def method_options() -> dict[str, dict]:
    """Every registered method's options, read from the source without importing it:
    ``name -> {"module", "class", "fields": [(name, type, default, comment), ...]}``.
    Fields of base option classes (``TrainOptions``, ``TipAdapter.Options``) come first,
    overridden defaults in place, as a dataclass orders them."""
    classes: dict[str, tuple[ast.ClassDef, dict[int, str]]] = {}
    methods = []
    for path in sorted(LIB.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        comments = {
            t.start[0]: t.string.lstrip("#").strip()
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type == tokenize.COMMENT
        }
        module = "fewclip." + ".".join(path.relative_to(LIB).with_suffix("").parts)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            classes[node.name] = (node, comments)
            nested = {c.name: c for c in node.body if isinstance(c, ast.ClassDef)}
            if "Options" in nested:
                classes[f"{node.name}.Options"] = (nested["Options"], comments)
            name = next(
                (
                    st.value.value
                    for st in node.body
                    if isinstance(st, ast.Assign)
                    and [ast.unparse(t) for t in st.targets] == ["name"]
                    and isinstance(st.value, ast.Constant)
                ),
                None,
            )
            if name and "Options" in nested and module.startswith("fewclip.methods."):
                methods.append((name, module, node.name))

    def fields(key: str, seen: frozenset = frozenset()) -> dict[str, tuple[str, ...]]:
        if key not in classes or key in seen:
            return {}
        cls, comments = classes[key]
        out: dict[str, tuple[str, ...]] = {}
        for base in cls.bases:
            out.update(fields(ast.unparse(base), seen | {key}))
        for row in _dataclass_fields(cls, comments):
            out[row[0]] = row
        return out

    return {
        name: {"module": module, "class": cls, "fields": list(fields(f"{cls}.Options").values())}
        for name, module, cls in sorted(methods)
    }


def options_table(name: str, found: dict[str, dict]) -> str:
    if name not in found:
        raise ValueError(f"<!-- options {name} -->: no method {name!r} in lib/fewclip/methods")
    info = found[name]
    lines = [
        f"Options of `{name}` (`{info['module']}.{info['class']}.Options`; a default of "
        "`None` takes the official value named in the comment):",
        "",
        "| option | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for field, kind, default, note in info["fields"]:
        kind = "`" + kind.replace(" | ", "` or `") + "`"  # no pipe inside a table's code span
        cells = [f"`{field}`", kind, f"`{default}`" if default else "", note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _options(markdown: str) -> str:
    if not OPTIONS.search(markdown):
        return markdown
    found = method_options()

    def table(match: re.Match) -> str:
        if match.group(1) != "all":
            return options_table(match.group(1), found)
        return "\n\n".join(f"### `{n}`\n\n" + options_table(n, found) for n in found)

    return OPTIONS.sub(table, markdown)


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

    return LINK.sub(rewrite, _options(markdown))
