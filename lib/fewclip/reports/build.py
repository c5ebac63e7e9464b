"""Executing the report notebooks with papermill and rendering them to HTML (see
:mod:`fewclip.reports`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..config import PUBLISHED_ROOT_VAR
from ..parallel import map_jobs
from ..progress import tqdm
from .index import (
    PATH_PARAMETERS,
    _git_commit,
    _now,
    _show,
    load_manifest,
    write_index,
)

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

#: ``fewclip reports --quick`` (``make demo``): every report at quicker settings, the ledger
#: at two seeds (the fewest an interval needs) and each row on them alone, the paper reports
#: at one seed on one task each, their ledger sections left to the claims report. The index
#: flags every report built with fewer seeds than the published ones.
QUICK: dict[str, dict[str, Any]] = {
    "claims": {"seeds": [1, 2], "row_seeds": False, "workers": 2},
    "clip_adapter": {"seeds": [1], "shots": [1, 16]},
    "dual": {"seeds": [1]},
    "difficulty": {
        "seeds": [1],
        "b2n_datasets": ["emoji_openmoji_subcategory"],
        "cross_targets": ["emoji_unseen_subcategory"],
        "ledger_claims": False,
    },
    "mutual": {"seeds": [1], "datasets": ["emoji_openmoji_subcategory"], "ledger_claims": False},
}


def quick_specs(specs: Iterable[ReportSpec]) -> list[ReportSpec]:
    """``specs`` with the :data:`QUICK` settings of their reports (by name) on top of their
    own parameters; reports without quick settings are left as they are."""
    return [replace(s, parameters={**s.parameters, **QUICK.get(s.name, {})}) for s in specs]


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

    from ..notebook import RUNS_METADATA

    nb = nbformat.read(ipynb, as_version=4)
    runs = failed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            tally = output.get("metadata", {}).get(RUNS_METADATA)
            if tally:
                runs += int(tally.get("runs", 0))
                failed += int(tally.get("failed", 0))
    return {"runs": runs, "failed_runs": failed}


def base_check_lines(ipynb: str | os.PathLike) -> list[str]:
    """The sentences of :func:`fewclip.notebook.show_base_check` in an executed notebook
    (trained methods below zero-shot on their own training classes), in order, once each."""
    import nbformat

    from ..notebook import BASE_CHECK_METADATA

    nb = nbformat.read(ipynb, as_version=4)
    lines: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            lines += output.get("metadata", {}).get(BASE_CHECK_METADATA) or []
    return list(dict.fromkeys(lines))


def conclusion_lines(ipynb: str | os.PathLike) -> list[str]:
    """The sentences of :func:`fewclip.notebook.show_conclusions` in an executed notebook
    (written by the notebook from its numbers), in order, once each: the page opens with
    them."""
    import nbformat

    from ..notebook import CONCLUSIONS_METADATA

    nb = nbformat.read(ipynb, as_version=4)
    lines: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            lines += output.get("metadata", {}).get(CONCLUSIONS_METADATA) or []
    return list(dict.fromkeys(lines))


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
    checks: Sequence[str] = (),
    provenance: dict[str, Any] | None = None,
    conclusions: Sequence[str] = (),
) -> str:
    """The Markdown the HTML starts with: ``conclusions`` (:func:`conclusion_lines`, the
    notebook's own sentences from its numbers) first, then commit, model, checkpoint and
    seeds, links to the index and the ledger, where the code is, failures, and ``checks``
    (:func:`base_check_lines`: trained methods below zero-shot on their own training
    classes)."""
    import fewclip

    from ..notebook import LINKS

    values = {**_defaults(notebook), **parameters}
    models = [f"`{values[key]}`" for key in _backbone_keys(values)]
    pre = values.get("pretrained", "default")
    lines = [
        f"*Report `{name}`, built {_now()[:16].replace('T', ' ')} from fewclip "
        f"{fewclip.__version__} at commit `{commit or 'unknown'}`; model "
        + (", ".join(models) or "(the notebook's default)")
        + f" with weights `{pre}`.*"
    ]
    if provenance and provenance.get("checkpoint"):
        sha = f" (sha256 `{provenance['sha256']}`)" if provenance.get("sha256") else ""
        seeds = provenance.get("seeds")
        lines[0] = lines[0][:-2] + (
            f"; checkpoint `{provenance['checkpoint']}`{sha}"
            + (f"; seeds {', '.join(map(str, seeds))}" if isinstance(seeds, list) else "")
            + ".*"
        )
    if name != "claims":
        lines.append(LINKS)
    else:
        lines.append(LINKS.split(" · ")[0])
    if conclusions:
        lines.insert(0, "## Conclusions\n\n" + "\n".join(f"- {c}" for c in conclusions))
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
    lines += list(checks)
    if error:
        lines.append(f"**This report FAILED:** `{error}` (the page stops at the failing cell).")
    return "\n\n".join(lines)


def report_provenance(notebook: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """What a report ran on, for its header and the index: ``backbone``, ``pretrained``,
    ``checkpoint`` (the weights file's name, "random init", or why it is unknown),
    ``sha256`` (the first 12 hex digits of the weights file) and ``seeds`` (the notebook's
    default where no parameter sets them). A notebook with several backbones (``backbone``
    and ``backbone_*`` parameters, as the claims ledger has) lists each checkpoint and
    digest, comma-separated, in the order of :func:`report_header`'s models."""
    values = {**_defaults(notebook), **parameters}
    pretrained = values.get("pretrained", "default")
    keys = _backbone_keys(values)
    found = [_weights_file(str(values[k]), pretrained) for k in keys if values[k]] or [("", "")]
    seeds = values.get("seeds")
    return {
        "backbone": str(values.get("backbone", "")),
        "pretrained": str(pretrained),
        "checkpoint": ", ".join(dict.fromkeys(name for name, _ in found)),
        "sha256": ", ".join(dict.fromkeys(sha for _, sha in found if sha)),
        "seeds": list(seeds) if isinstance(seeds, (list, tuple)) else seeds,
    }


def _backbone_keys(values: dict[str, Any]) -> list[str]:
    """The parameters naming a backbone (``backbone``, ``backbone_*``), in one order for the
    header's models and the provenance's checkpoints."""
    return sorted(k for k in values if k == "backbone" or k.startswith("backbone_"))


def _weights_file(backbone: str, pretrained: Any) -> tuple[str, str]:
    """(file name or "random init" or why it is unknown, first 12 hex digits of its sha256)."""
    try:
        from ..backbones import file_digest, resolve_weights

        path = resolve_weights(backbone, pretrained)
        return (Path(path).name, file_digest(path)[:12]) if path else ("random init", "")
    except Exception as e:  # shown as such in the index; the build itself reports it
        return f"unknown ({type(e).__name__})", ""


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


#: CSS added to every report page: wide tables scroll inside the window; numbers never
#: wrap (no "18.1/2"), headers wrap between words only.
REPORT_CSS = """
<style>
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
.jp-RenderedHTMLCommon td { white-space: nowrap; }
.jp-RenderedHTMLCommon th { white-space: normal; overflow-wrap: normal; word-break: keep-all; }
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
    """HTML of an executed notebook: lab template, images as data URIs, code optional
    (hidden code: no ``In [n]:`` / ``Out[n]:`` prompts either, they would point at nothing),
    ``header`` (Markdown) as the first cell, :data:`REPORT_CSS` for wide tables."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    if header:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(header))
    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=not code,
        exclude_input_prompt=not code,
        exclude_output_prompt=not code,
    )
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
                checks=base_check_lines(ipynb),
                provenance=job.get("provenance"),
                conclusions=conclusion_lines(ipynb),
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
            entry["provenance"] = report_provenance(spec.notebook, params)
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
        from ..results import ResultStore

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
    from ..notebook import project_root

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
    keys = ("notebook_hash", "parameters", "code", "provenance")
    same = all(old.get(k) == new.get(k) for k in keys)
    files = all(old.get(k) and (out / old[k]).exists() for k in ("html", "ipynb"))
    return same and files and old.get("status") == "ok"


def _failure(error: str) -> dict[str, Any]:
    now = _now()
    return {"status": "failed", "error": error, "started_at": now, "built_at": now}


# -- small helpers ---------------------------------------------------------------------------


def _clip(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.=]+", "_", _show(value)).strip("_") or "none"


def _listing(folder: Path, out: Path, limit: int = 30) -> list[str]:
    """The files a notebook saved in its output folder, relative to ``out`` (if below it)."""
    if not folder.is_dir() or not folder.is_relative_to(out):
        return []
    return sorted(str(p.relative_to(out)) for p in folder.rglob("*") if p.is_file())[:limit]
