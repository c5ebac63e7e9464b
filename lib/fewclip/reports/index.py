"""The reports' manifest (``manifest.json``: what each build was made from) and their
index page (``index.html``), rendered from the Jinja2 template
``fewclip/templates/index.html.j2`` (package data); also the facts a build shows: when, and
from which commit."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

#: Parameters the builder always passes, made absolute.
PATH_PARAMETERS = ("data_root", "cache_dir", "results", "output_dir")

#: The seeds of the published reports (``reports/``, built by ``make reports``, which passes
#: them to every notebook): the index flags every report built with fewer (``make demo``
#: builds them with ``--quick``: :data:`fewclip.reports.build.QUICK`).
PUBLISHED_SEEDS = (1, 2, 3, 4, 5)

MANIFEST = "manifest.json"
INDEX = "index.html"
#: The index page's Jinja2 template, package data under ``fewclip/templates``.
INDEX_TEMPLATE = "index.html.j2"


def load_manifest(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Report name -> entry of the last build (parameters, hash, status, times, files)."""
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def write_index(
    out: str | os.PathLike, manifest: dict[str, dict[str, Any]], order: Sequence[str] = ()
) -> None:
    """Write ``manifest.json`` and ``index.html``: the reports in ``order``, then the others."""
    import jinja2

    import fewclip

    out = Path(out)
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    names = [n for n in order if n in manifest]
    names += sorted(n for n in manifest if n not in names and _has_files(out, manifest[n]))
    entries = [manifest[n] for n in names]
    shown = [{k: _show(v, k) for k, v in e.get("parameters", {}).items()} for e in entries]
    common = dict(shown[0]) if shown else {}
    for params in shown[1:]:
        common = {k: v for k, v in common.items() if params.get(k) == v}
    common.pop("output_dir", None)
    rows = []
    for e, params in zip(entries, shown, strict=True):
        facts = e.get("provenance") or {}
        seeds = facts.get("seeds")
        rows.append(
            {
                **e,
                "model": f"{facts.get('backbone', '')} ({facts.get('pretrained', '')})"
                if facts
                else "",
                "checkpoint": facts.get("checkpoint", ""),
                "sha256": facts.get("sha256", ""),
                "seeds": ", ".join(map(str, seeds)) if isinstance(seeds, list) else "",
                "fewer_seeds": isinstance(seeds, list) and len(seeds) < len(PUBLISHED_SEEDS),
                "html": quote(e["html"]) if e.get("html") else None,
                "ipynb": quote(e["ipynb"]) if e.get("ipynb") else None,
                "params": [(k, v) for k, v in params.items() if k not in common],
                "files": [(quote(f), f) for f in e.get("files") or []],
                "duration": _duration(e.get("duration_s")),
                "built": (e.get("built_at") or "")[:16].replace("T", " "),
            }
        )
    counts = {s: sum(e.get("status") == s for e in entries) for s in ("ok", "failed", "pending")}
    commits = sorted({str(e["commit"]) for e in entries if e.get("commit")})
    ledger, ledger_line = _ledger_rows(out, manifest.get("claims"))
    env = jinja2.Environment(loader=jinja2.PackageLoader("fewclip", "templates"), autoescape=True)
    page = env.get_template(INDEX_TEMPLATE).render(
        ledger=ledger,
        ledger_line=ledger_line,
        ledger_href=quote((manifest.get("claims") or {}).get("html") or "claims.html"),
        rows=rows,
        common=list(common.items()),
        counts=counts,
        commits=commits,
        published_seeds=len(PUBLISHED_SEEDS),
        fewer=sum(bool(r["fewer_seeds"]) for r in rows),
        written=_now()[:16].replace("T", " "),
        version=fewclip.__version__,
        commit=_git_commit(),
    )
    _write_atomic(out / INDEX, page)


def _ledger_rows(out: Path, entry: dict[str, Any] | None) -> tuple[list[dict], str]:
    """The claims report's verdicts (``claims_files/verdicts.csv``) for the index's top."""
    if not entry or entry.get("status") != "ok":
        return [], ""
    path = out / "claims_files" / "verdicts.csv"
    if not path.is_file():
        return [], ""
    table = pd.read_csv(path)
    rows = []
    for c in table.to_dict("records"):
        effect = "-"
        if pd.notna(c.get("effect")):
            effect = f"{c['effect']:+.1f} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
        verdict = str(c.get("verdict", ""))
        css = verdict.split(" ")[0].rstrip(":").replace("not", "notrun") if verdict else ""
        rows.append({**c, "effect": effect, "css": css})
    # the claims report's own line, in its verdict order; imported here, since fewclip.claims
    # brings torch and open_clip, which the report builder's start-up does not need
    from ..claims import summary_line

    return rows, summary_line(table)


def _has_files(out: Path, entry: dict[str, Any]) -> bool:
    return any(entry.get(k) and (out / entry[k]).exists() for k in ("html", "ipynb"))


# -- small helpers ---------------------------------------------------------------------------


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


def _show(value: Any, key: str = "") -> str:
    """A parameter as the index shows it: paths relative to here when below it."""
    if key in PATH_PARAMETERS and isinstance(value, str) and value:
        try:
            return str(Path(value).relative_to(Path.cwd()))
        except ValueError:
            return value
    return value if isinstance(value, str) else json.dumps(value)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


#: tracked paths whose uncommitted changes make a build differ from HEAD (code, notebooks,
#: weights); the reports' own outputs are not among them
BUILD_INPUTS = ("lib", "notebooks")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _git_commit() -> str | None:
    """HEAD's short hash, with ``+uncommitted`` when tracked files under
    :data:`BUILD_INPUTS` differ from it: the report was then built from code or weights
    that no commit holds."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", *BUILD_INPUTS)
    return f"{head}+uncommitted" if changed else head
