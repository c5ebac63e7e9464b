"""Batch report builds: execute notebooks with papermill, render them to HTML, index them.

    python -m fewclip.reports                        # the ledger + four paper reports, defaults
    python -m fewclip.reports dual explore           # some reports, by name
    python -m fewclip.reports -p shots '[1, 16]'     # a parameter for every report (JSON or text)
    python -m fewclip.reports -p backbone fewclip-test-rn -p pretrained none   # quick check
    python -m fewclip.reports --spec sweep.json      # your own list of reports
    python -m fewclip.reports --workers 2            # two notebooks at a time, local processes
    python -m fewclip.reports --scheduler tcp://host:8786   # on a Dask (or dask-jobqueue) cluster

For a report named ``dual`` and ``--out reports``:

    reports/dual.ipynb       the executed notebook (up to the failing cell if one fails)
    reports/dual.html        its HTML: nbconvert's lab template, code cells hidden (a note at
                             the top names the .ipynb beside it; --code shows them), a header
                             with the fewclip commit, the model and how many runs failed,
                             figures embedded as data URIs (one self-contained file)
    reports/dual_files/      the notebook's ``output_dir`` (tables or figures it saves);
                             emptied before each build of the report, so that it holds
                             only what the latest build saved (an ``output_dir`` given as
                             a parameter is the user's folder and is left as it is)
    reports/index.html       every report: links (HTML, notebook, saved files), parameters,
                             status (ok, ok with failed runs, or failed with the error),
                             duration, build time
    reports/manifest.json    what the index is made from, and what a rebuild checks

Every notebook gets ``data_root``, ``cache_dir``, ``results`` (one results store shared by
all reports) and ``output_dir`` (relative to the project root for the project's own
notebooks, else absolute), then the spec's own parameters, then the ``-p`` overrides. A
notebook whose runs all fail fails (``fewclip.notebook.run_grid`` raises); one with some
failed runs says how many at the top of its HTML, and the index shows the count.

Two levels of reuse: the notebooks go through the run API with the shared
store, so a run already there is not repeated; and a report whose last build succeeded
with the same parameters and the same notebook (a hash of its cells) is not executed
again unless ``--force``. A failing notebook gives a failed entry (and its notebook and
HTML up to the failing cell); the others go on; the exit status is 1 if any failed.

``--workers`` / ``--scheduler`` spread *notebooks* over local processes or a Dask cluster
(whose workers need fewclip installed and these paths visible). The notebooks' own
``workers`` / ``scheduler`` parameters, for the runs inside one notebook, are separate:
pass them as ``-p workers 4`` or ``-p scheduler tcp://host:8786``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from tqdm.auto import tqdm

from .config import PUBLISHED_ROOT_VAR, default_data_root
from .parallel import map_jobs

#: Report name -> (notebook file in the notebooks folder, title).
NOTEBOOKS = {
    "claims": ("claims.ipynb", "Claims ledger: does each paper's claim hold here?"),
    "clip_adapter": ("clip_adapter.ipynb", "CLIP-Adapter: Better Vision-Language Models"),
    "dual": ("dual.ipynb", "DualAdapter: Negative Yields Positive"),
    "difficulty": ("difficulty.ipynb", "APEX: Difficulty-Agnostic Efficient Transfer Learning"),
    "mutual": ("mutual.ipynb", "TOMM: Task-Oriented Multi-Modal Mutual Learning"),
    "explore": ("explore.ipynb", "Explorer"),
}  # fmt: skip

#: The default build: the claims ledger first, then one report per paper, each notebook
#: with its own defaults.
PAPER_REPORTS = ("claims", "clip_adapter", "dual", "difficulty", "mutual")

#: Parameters the builder always passes, made absolute.
PATH_PARAMETERS = ("data_root", "cache_dir", "results", "output_dir")

MANIFEST = "manifest.json"
INDEX = "index.html"


@dataclass
class ReportSpec:
    """One report: a notebook and the parameters it is executed with."""

    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    title: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=-]*", self.name):
            raise ValueError(f"report name {self.name!r}: use letters, digits and ._=-")
        self.title = self.title or self.name


def default_specs(
    names: Sequence[str] = PAPER_REPORTS, notebooks: str | os.PathLike = "notebooks"
) -> list[ReportSpec]:
    """The registered reports ``names`` (see :data:`NOTEBOOKS`), default parameters."""
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown report(s) {unknown}; choose from {list(NOTEBOOKS)}")
    return [
        ReportSpec(n, str(Path(notebooks) / NOTEBOOKS[n][0]), title=NOTEBOOKS[n][1]) for n in names
    ]


def report_grid(spec: ReportSpec, **axes: Sequence[Any]) -> list[ReportSpec]:
    """One report per combination of parameter values, named after them.

    ``report_grid(spec, shots=[[1], [16]])`` gives ``dual-shots1`` and ``dual-shots16``.
    """
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        suffix = "-".join(f"{k}{_slug(v)}" for k, v in changes.items())
        label = ", ".join(f"{k}={_show(v)}" for k, v in changes.items())
        out.append(
            ReportSpec(
                f"{spec.name}-{suffix}",
                spec.notebook,
                {**spec.parameters, **changes},
                f"{spec.title} ({label})",
            )
        )
    return out


def load_specs(path: str | os.PathLike) -> list[ReportSpec]:
    """Report specs from a JSON list of ``{name, notebook, parameters, title, grid}``.

    ``name`` defaults to the notebook's file name; ``grid`` (parameter -> list of values)
    expands one entry into several reports (:func:`report_grid`).
    """
    out = []
    for item in json.loads(Path(path).read_text()):
        item = dict(item)
        axes = item.pop("grid", None)
        item.setdefault("name", Path(item["notebook"]).stem)
        spec = ReportSpec(**item)
        out.extend(report_grid(spec, **axes) if axes else [spec])
    return out


def notebook_hash(path: str | os.PathLike) -> str:
    """Hash of a notebook's cells (type, source, tags): outputs and metadata do not count."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    h = hashlib.sha256()
    for cell in nb.cells:
        tags = sorted(cell.get("metadata", {}).get("tags", []))
        h.update(json.dumps([cell.cell_type, cell.source, tags]).encode())
    return h.hexdigest()[:16]


def run_counts(ipynb: str | os.PathLike) -> dict[str, int]:
    """Runs and failed runs of an executed notebook, summed over the count lines that
    :func:`fewclip.notebook.run_grid` tags with output metadata (0 and 0 when none)."""
    import nbformat

    from .notebook import RUNS_METADATA

    nb = nbformat.read(ipynb, as_version=4)
    runs = failed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            tally = output.get("metadata", {}).get(RUNS_METADATA)
            if tally:
                runs += int(tally.get("runs", 0))
                failed += int(tally.get("failed", 0))
    return {"runs": runs, "failed_runs": failed}


def report_header(
    name: str,
    parameters: dict[str, Any],
    *,
    notebook: str,
    shown_as: str | None = None,
    code: bool,
    commit: str | None,
    counts: dict[str, int] | None = None,
    error: str | None = None,
) -> str:
    """The Markdown the HTML starts with: commit, model, where the code is, failures."""
    import fewclip

    values = {**_defaults(notebook), **parameters}
    models = []
    for key in sorted(k for k in values if k == "backbone" or k.startswith("backbone_")):
        models.append(f"`{values[key]}`")
    pre = values.get("pretrained", "default")
    lines = [
        f"*Report `{name}`, built {_now()[:16].replace('T', ' ')} from fewclip "
        f"{fewclip.__version__} at commit `{commit or 'unknown'}`; model "
        + (", ".join(models) or "(the notebook's default)")
        + f" with weights `{pre}`.*"
    ]
    if not code:
        lines.append(
            f"*The code cells are hidden on this page: the executed notebook with all its "
            f"code is [`{name}.ipynb`]({quote(name)}.ipynb), beside this file (open it in "
            f"JupyterLab); its source is `{shown_as or notebook}`.*"
        )
    counts = counts or {}
    if counts.get("failed_runs"):
        lines.append(
            f"**{counts['failed_runs']} of {counts['runs']} runs FAILED**; each grid lists "
            "its failed runs with the error where they occur, and the figures leave them out."
        )
    if error:
        lines.append(f"**This report FAILED:** `{error}` (the page stops at the failing cell).")
    return "\n\n".join(lines)


def _defaults(notebook: str) -> dict[str, Any]:
    """The notebook's parameter defaults (literals of its parameters cell; {} if unreadable)."""
    import ast

    try:
        import papermill as pm

        found = pm.inspect_notebook(notebook)
    except Exception:
        return {}
    out = {}
    for name, info in found.items():
        try:
            out[name] = ast.literal_eval(info.get("default", ""))
        except (ValueError, SyntaxError):
            continue
    return out


#: CSS added to every report page: wide tables scroll or wrap inside a 1,400 px window.
REPORT_CSS = """
<style>
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { white-space: normal;
  max-width: 32em; overflow-wrap: anywhere; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
</style>
"""


def export_html(
    ipynb: str | os.PathLike,
    html: str | os.PathLike,
    title: str,
    code: bool,
    header: str | None = None,
) -> None:
    """HTML of an executed notebook: lab template, images as data URIs, code optional,
    ``header`` (Markdown) as the first cell, :data:`REPORT_CSS` for wide tables."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    if header:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(header))
    exporter = HTMLExporter(template_name="lab", exclude_input=not code)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = body.replace("</head>", REPORT_CSS + "</head>", 1)
    Path(html).write_text(body, encoding="utf-8")


def _build_one(job: dict[str, Any]) -> dict[str, Any]:
    """Worker body (picklable): execute one notebook, write its HTML, never raise."""
    import papermill as pm

    started, start = _now(), time.perf_counter()
    ipynb, html = Path(job["ipynb"]), Path(job["html"])
    for stale in (ipynb, html):
        stale.unlink(missing_ok=True)
    saved = job.get("files_dir") or job["parameters"].get("output_dir")
    files = Path(saved) if saved else None
    error = None
    previous = os.environ.get(PUBLISHED_ROOT_VAR)
    try:
        if files and job.get("files_owned") and files.is_dir():
            shutil.rmtree(files)  # a previous build's files: none may outlive it
        if files:
            files.mkdir(parents=True, exist_ok=True)
        # the kernel inherits this: its banner then names no path of the build machine
        os.environ[PUBLISHED_ROOT_VAR] = "1"
        pm.execute_notebook(
            job["notebook"],
            str(ipynb),
            parameters=job["parameters"],
            kernel_name=job["kernel"],
            language="python",
            cwd=str(Path(job["notebook"]).parent),
            progress_bar=False,
            execution_timeout=job["timeout"],
            # the kernel's start-up warnings would break the progress bar; cell output is kept
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except pm.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue}"
    except Exception as e:  # reported, not raised: the build goes on
        error = f"{type(e).__name__}: {e}"
    finally:
        if previous is None:
            os.environ.pop(PUBLISHED_ROOT_VAR, None)
        else:
            os.environ[PUBLISHED_ROOT_VAR] = previous
    counts = {"runs": 0, "failed_runs": 0}
    if ipynb.exists():
        try:
            _relative_papermill_paths(ipynb, job.get("source"))
            counts = run_counts(ipynb)
            if counts["runs"] and counts["failed_runs"] == counts["runs"] and not error:
                error = f"all {counts['runs']} runs failed"
            header = report_header(
                job["name"],
                job["parameters"],
                notebook=job["notebook"],
                shown_as=job.get("source"),
                code=job["code"],
                commit=job.get("commit"),
                counts=counts,
                error=error,
            )
            export_html(ipynb, html, job["title"], job["code"], header=header)
        except Exception as e:
            error = error or f"HTML export: {type(e).__name__}: {e}"
    if files and files.is_dir() and not any(files.iterdir()):
        files.rmdir()  # the notebook saved nothing: no empty folder next to the reports
    return {
        "status": "failed" if error else "ok",
        "error": _clip(error) if error else None,
        "started_at": started,
        "built_at": _now(),
        "duration_s": round(time.perf_counter() - start, 2),
        "ipynb": ipynb.name if ipynb.exists() else None,
        "html": html.name if html.exists() else None,
        "files": _listing(files, html.parent) if files else [],
        **counts,
    }


def _relative_papermill_paths(ipynb: Path, source: str | None) -> None:
    """Papermill records the absolute input and output paths in the notebook's metadata;
    for a project notebook keep them as the repository knows them (source, report name)."""
    import nbformat

    if not source or Path(source).is_absolute():
        return
    nb = nbformat.read(ipynb, as_version=4)
    meta = nb.metadata.get("papermill")
    if meta is not None:
        meta["input_path"], meta["output_path"] = source, ipynb.name
        nbformat.write(nb, ipynb)


def _pool_init(threads: int) -> None:
    """Local pool: share the cores between the notebooks' kernels (they inherit this)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def build_reports(
    specs: Iterable[ReportSpec] | None = None,
    out: str | os.PathLike = "reports",
    *,
    data_root: str | os.PathLike = "data",
    cache_dir: str | os.PathLike = "cache",
    results: str | os.PathLike = "runs/results.sqlite",
    overrides: dict[str, Any] | None = None,
    workers: int = 1,
    scheduler: Any = None,
    force: bool = False,
    kernel: str = "python3",
    timeout: float | None = None,
    code: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Build every report into ``out`` and write its index; one row per report.

        ``specs`` defaults to :func:`default_specs`. ``overrides`` are parameters for every
        report. ``workers > 1``: a local process pool; ``scheduler``: a Dask scheduler address
        or ``distributed.Client`` (see :func:`fewclip.parallel.map_jobs`). ``timeout``: seconds
        per cell. ``code=False`` (the default) leaves the code cells out of the HTML, with a note
    at the top naming the executed ``.ipynb`` beside it. Path parameters are passed relative to
    the project root when both the notebook and the path lie under it (the notebooks resolve
    them against the root), so the injected-parameters cell shows no machine's folders.
    Rows: ``name``,
        ``status`` ("ok" or "failed"), ``error`` (the exception: type and message), ``duration_s``,
        ``skipped`` (True when the last build was reused), ``html``, ``ipynb``, ...
    """
    specs = default_specs() if specs is None else list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"report names repeat: {sorted(n for n in names if names.count(n) > 1)}")
    python = kernel_python(kernel)
    if python and not _same_file(python, sys.executable):
        warnings.warn(
            f"kernel {kernel!r} runs {python}, not this interpreter ({sys.executable}), so the "
            "notebooks may not see this fewclip; choose another kernel (make installs 'fewclip')",
            stacklevel=2,
        )
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    common = {"data_root": data_root, "cache_dir": cache_dir, "results": results}

    entries: dict[str, dict[str, Any]] = {}
    jobs: list[dict[str, Any]] = []
    skipped = set()
    for spec in specs:
        own_files = out / f"{spec.name}_files"
        params = {**common, "output_dir": own_files}
        params.update({**spec.parameters, **(overrides or {})})
        # the builder's own folder is emptied before a build; a folder the user named is not
        owned = Path(params["output_dir"]).expanduser().absolute() == own_files
        root = _root_of(spec.notebook)
        files_dir = None
        for key in PATH_PARAMETERS:
            if params.get(key):
                absolute = Path(params[key]).expanduser().absolute()
                files_dir = str(absolute) if key == "output_dir" else files_dir
                params[key] = _relative(absolute, root)
        params = json.loads(json.dumps(params, default=str))
        entry = {
            "name": spec.name,
            "title": spec.title,
            "notebook": spec.notebook,
            "notebook_hash": None,
            "parameters": params,
            "code": code,
        }
        try:
            entry["notebook_hash"] = notebook_hash(spec.notebook)
        except Exception as e:
            why = "not found" if isinstance(e, FileNotFoundError) else f"unreadable ({e})"
            entries[spec.name] = {**entry, **_failure(f"notebook {spec.notebook} {why}")}
            continue
        old = manifest.get(spec.name, {})
        if not force and _reusable(old, entry, out):
            entries[spec.name] = old
            skipped.add(spec.name)
            continue
        entries[spec.name] = {**entry, "status": "pending", "error": None}
        jobs.append(
            {
                **entry,
                "source": _relative(Path(spec.notebook).absolute(), root),
                "files_dir": files_dir,
                "files_owned": owned,
                "notebook": str(Path(spec.notebook).absolute()),
                "ipynb": str(out / f"{spec.name}.ipynb"),
                "html": str(out / f"{spec.name}.html"),
                "kernel": kernel,
                "timeout": timeout,
            }
        )
    for store in {_absolute(e) for e in entries.values()} - {None}:
        from .results import ResultStore

        Path(store).parent.mkdir(parents=True, exist_ok=True)
        ResultStore(store)  # create the table once, before the notebooks race to

    manifest.update(entries)
    write_index(out, manifest, order=names)
    commit = _git_commit()
    for job in jobs:
        job["commit"] = commit
    bar = tqdm(
        total=len(specs), initial=len(specs) - len(jobs), desc="reports", disable=not progress
    )

    def done(i: int, result: dict[str, Any]) -> None:
        name = jobs[i]["name"]
        manifest[name] = entries[name] = {**entries[name], **result, "commit": commit}
        write_index(out, manifest, order=names)
        bar.update(1)
        bar.set_postfix_str(f"{name} {result['status']}")

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    map_jobs(
        _build_one,
        [(job,) for job in jobs],
        done,
        workers=workers,
        scheduler=scheduler,
        initializer=_pool_init,
        initargs=(threads,),
        name="fewclip-report",
    )
    bar.close()
    write_index(out, manifest, order=names)
    rows = [{**entries[n], "skipped": n in skipped} for n in names]
    return pd.DataFrame(rows).drop(columns=["parameters"])


def kernel_python(kernel: str) -> str | None:
    """The interpreter a Jupyter kernel runs (None for an unknown kernel).

    jupyter_client starts a kernelspec whose command is a bare ``python`` (as the venv's
    ``python3`` is) with the interpreter that starts it, so from the venv it is the venv's.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(kernel).argv
    except NoSuchKernel:
        return None
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}
    return sys.executable if argv and argv[0] in bare else (argv[0] if argv else None)


def _root_of(notebook: str | os.PathLike) -> Path | None:
    """The project root holding ``notebook`` (None for a notebook outside any project)."""
    from .notebook import project_root

    folder = Path(notebook).absolute().parent
    try:
        root = project_root(folder)
    except FileNotFoundError:
        return None
    return root if folder.is_relative_to(root) and (root / "pyproject.toml").is_file() else None


def _relative(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when below it (and ``root`` is known), else absolute."""
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def _absolute(entry: dict[str, Any]) -> str | None:
    """An entry's results store as an absolute path (relative ones are under its root)."""
    store = entry.get("parameters", {}).get("results")
    if not store or Path(store).is_absolute():
        return store or None
    return str((_root_of(entry["notebook"]) or Path.cwd()) / store)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _reusable(old: dict[str, Any], new: dict[str, Any], out: Path) -> bool:
    same = all(old.get(k) == new[k] for k in ("notebook_hash", "parameters", "code"))
    files = all(old.get(k) and (out / old[k]).exists() for k in ("html", "ipynb"))
    return same and files and old.get("status") == "ok"


def _failure(error: str) -> dict[str, Any]:
    now = _now()
    return {"status": "failed", "error": error, "started_at": now, "built_at": now}


# -- manifest and index ----------------------------------------------------------------------


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
        rows.append(
            {
                **e,
                "html": quote(e["html"]) if e.get("html") else None,
                "ipynb": quote(e["ipynb"]) if e.get("ipynb") else None,
                "params": [(k, v) for k, v in params.items() if k not in common],
                "files": [(quote(f), f) for f in e.get("files") or []],
                "duration": _duration(e.get("duration_s")),
                "built": (e.get("built_at") or "")[:16].replace("T", " "),
            }
        )
    counts = {s: sum(e.get("status") == s for e in entries) for s in ("ok", "failed", "pending")}
    ledger, ledger_line = _ledger_rows(out, manifest.get("claims"))
    page = jinja2.Template(_INDEX_TEMPLATE, autoescape=True).render(
        ledger=ledger,
        ledger_line=ledger_line,
        ledger_href=quote((manifest.get("claims") or {}).get("html") or "claims.html"),
        rows=rows,
        common=list(common.items()),
        counts=counts,
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
    from .claims import summary_line

    return rows, summary_line(table)


def _has_files(out: Path, entry: dict[str, Any]) -> bool:
    return any(entry.get(k) and (out / entry[k]).exists() for k in ("html", "ipynb"))


_INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fewclip reports</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 90em; padding: 0 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left;
         vertical-align: top; }
code { font-size: .85em; }
.ok { color: #176f2c; } .failed { color: #b00020; } .pending { color: #8a6d00; }
.error { white-space: pre-wrap; font-family: monospace; font-size: .85em; color: #b00020; }
.partial { color: #8a4b00; font-weight: bold; }
.supported { background: #d9f2d9; } .contradicted { background: #f8d7da; }
.inconclusive { background: #fff3cd; } .untested { background: #e2e3e5; }
.notrun { color: #777; }
small { color: #666; }
</style>
</head>
<body>
<h1>fewclip reports</h1>
<p>{{ counts.ok }} ok, {{ counts.failed }} failed{% if counts.pending %},
{{ counts.pending }} pending{% endif %}. Index written {{ written }} by fewclip {{ version }}
{%- if commit %} at commit <code>{{ commit }}</code>{% endif %}.</p>
{% if ledger %}<h2 id="ledger">Claims ledger</h2>
<p>{{ ledger_line }}. Effect: A - B in accuracy points, paired over seeds, few-shot samples
and test images, with its 95% interval (bootstrap over test images combined with the seed
spread); details in the <a href="{{ ledger_href }}">claims report</a>. Verdicts are about
the model and offline tasks named there, not the papers' benchmarks.</p>
<table>
<thead><tr><th>Claim</th><th>Comparison</th><th>Effect [95% interval]</th><th>Seeds</th>
<th>Verdict</th></tr></thead>
<tbody>
{% for c in ledger %}<tr data-claim="{{ c.id }}"><td>{{ c.claim }}<br><small>{{ c.id }}</small></td>
<td><small>{{ c.comparison }}</small></td><td>{{ c.effect }}</td><td>{{ c.n_seeds }}</td>
<td class="{{ c.css }}">{{ c.verdict }}</td></tr>
{% endfor %}</tbody>
</table>
<h2>Reports</h2>{% endif %}
{% if common %}<p>Parameters of every report:
{% for k, v in common %}<code>{{ k }}={{ v }}</code>{{ ", " if not loop.last }}{% endfor %}.
Paths are relative to the folder the build ran in.</p>{% endif %}
<table>
<thead><tr><th>Report</th><th>Notebook (executed)</th><th>Parameters</th><th>Status</th>
<th>Duration</th><th>Built</th></tr></thead>
<tbody>
{% for r in rows %}<tr data-report="{{ r.name }}" data-status="{{ r.status }}">
<td>{% if r.html %}<a href="{{ r.html }}">{{ r.title }}</a>{% else %}{{ r.title }}{% endif %}
<br><small>{{ r.name }}</small></td>
<td>{% if r.ipynb %}<a href="{{ r.ipynb }}">{{ r.notebook }}</a>{% else %}{{ r.notebook }}
{%- endif %}{% for href, f in r.files %}<br><a href="{{ href }}"><small>{{ f }}</small></a>
{%- endfor %}</td>
<td>{% for k, v in r.params %}<code>{{ k }}={{ v }}</code><br>{% endfor %}</td>
<td class="{{ r.status }}">{{ r.status }}
{%- if r.failed_runs %}<div class="partial" data-failed-runs="{{ r.failed_runs }}">
{{ r.failed_runs }} of {{ r.runs }} runs failed</div>{% endif %}
{%- if r.error %}<div class="error">{{ r.error }}</div>{% endif %}</td>
<td>{{ r.duration }}</td>
<td>{{ r.built }}{% if r.commit %}<br><small>{{ r.commit }}</small>{% endif %}</td>
</tr>
{% endfor %}</tbody>
</table>
</body>
</html>
"""


# -- small helpers ---------------------------------------------------------------------------


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _clip(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.=]+", "_", _show(value)).strip("_") or "none"


def _listing(folder: Path, out: Path, limit: int = 30) -> list[str]:
    """The files a notebook saved in its output folder, relative to ``out`` (if below it)."""
    if not folder.is_dir() or not folder.is_relative_to(out):
        return []
    return sorted(str(p.relative_to(out)) for p in folder.rglob("*") if p.is_file())[:limit]


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


# -- command line ----------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """A ``-p`` value: JSON where it parses (numbers, booleans, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    """``fewclip reports`` / ``python -m fewclip.reports``; returns 1 if a report failed."""
    parser = argparse.ArgumentParser(
        prog="fewclip reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="*",
        help=f"reports to build, of {list(NOTEBOOKS)} (default: {' '.join(PAPER_REPORTS)})",
    )
    parser.add_argument("--spec", help="JSON list of report specs, instead of names")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a parameter for every report; VALUE is parsed as JSON where it can be",
    )
    parser.add_argument("--notebooks", default="notebooks", help="folder of the named notebooks")
    parser.add_argument("--out", default="reports", help="where reports and index go")
    parser.add_argument("--data-root", default=default_data_root(), help="$FEWCLIP_DATA or data")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--results", default="runs/results.sqlite", help="shared results store")
    parser.add_argument("--workers", type=int, default=1, help="notebooks at a time, locally")
    parser.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786)")
    parser.add_argument("--force", action="store_true", help="execute even if up to date")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--timeout", type=float, help="seconds per cell (default: none)")
    parser.add_argument("--code", action="store_true", help="show the code cells in the HTML")
    parser.add_argument(
        "--no-code", action="store_true", help="hide the code cells (the default; kept for scripts)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.spec and args.names:
        parser.error("give report names or --spec, not both")
    try:
        specs = (
            load_specs(args.spec)
            if args.spec
            else default_specs(args.names or PAPER_REPORTS, args.notebooks)
        )
    except (ValueError, OSError, TypeError, KeyError) as e:
        parser.error(str(e))
    frame = build_reports(
        specs,
        args.out,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        results=args.results,
        overrides={k: _parse_value(v) for k, v in args.parameter},
        workers=args.workers,
        scheduler=args.scheduler,
        force=args.force,
        kernel=args.kernel,
        timeout=args.timeout,
        code=args.code and not args.no_code,
        progress=not args.no_progress,
    )
    failed = frame[frame["status"] != "ok"]
    reused = int(frame["skipped"].sum())
    print(
        f"{len(frame)} reports: {len(frame) - len(failed)} ok ({reused} up to date), "
        f"{len(failed)} failed -> {Path(args.out) / INDEX}"
    )
    for row in failed.itertuples():
        print(textwrap.indent(f"{row.name}: {row.error}", "  "), file=sys.stderr)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    from fewclip.reports import main as _main  # the package's module, so workers can import it

    sys.exit(_main())
