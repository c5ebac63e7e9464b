"""Batch report builds: execute notebooks with papermill, render them to HTML, index them.

    python -m fewclip.reports                        # the ledger + four paper reports, defaults
    python -m fewclip.reports dual explore           # some reports, by name
    python -m fewclip.reports -p shots '[1, 16]'     # a parameter for every report (JSON or text)
    python -m fewclip.reports -p backbone fewclip-test-rn -p pretrained none   # quick check
    python -m fewclip.reports --spec sweep.json      # your own list of reports
    python -m fewclip.reports --workers 2            # two notebooks at a time, local processes
    python -m fewclip.reports --quick                # quicker settings (make demo; QUICK)
    python -m fewclip.reports --scheduler tcp://host:8786   # the runs on a Dask cluster
    fewclip reports --slurm --slurm-jobs 4           # the runs on a Slurm cluster it starts

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
                             duration, build time (the Jinja2 template
                             ``fewclip/templates/index.html.j2``)
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

``--workers`` runs several *notebooks* at a time in local processes. ``--scheduler ADDRESS``
or ``--slurm`` (with the ``--slurm-*`` options of :mod:`fewclip.cluster`, which starts the
cluster and shuts it down at the end, also on Ctrl-C) send the notebooks' *runs* to a Dask
cluster: the notebooks run here and pass it as their ``scheduler`` parameter, so this
machine alone writes the results store (see :mod:`fewclip.sweep`). From Python,
``build_reports(scheduler=...)`` spreads the notebooks themselves over a Dask cluster
(whose workers then need these paths, the results store included). The notebooks' own
``workers`` parameter (``-p workers 4``) sets each notebook's local process pool.

The package: :mod:`.build` executes and renders the notebooks, :mod:`.index` writes the
manifest and the index page; the command line is :func:`fewclip.cli.cmd_reports`.
"""

from .build import (
    NOTEBOOKS,
    PAPER_REPORTS,
    QUICK,
    REPORT_CSS,
    ReportSpec,
    build_reports,
    default_specs,
    export_html,
    kernel_python,
    load_specs,
    notebook_hash,
    quick_specs,
    report_grid,
    report_header,
    run_counts,
)
from .index import INDEX, INDEX_TEMPLATE, MANIFEST, PATH_PARAMETERS, load_manifest, write_index

__all__ = [
    "INDEX",
    "INDEX_TEMPLATE",
    "MANIFEST",
    "NOTEBOOKS",
    "PAPER_REPORTS",
    "QUICK",
    "PATH_PARAMETERS",
    "REPORT_CSS",
    "ReportSpec",
    "build_reports",
    "default_specs",
    "export_html",
    "kernel_python",
    "load_manifest",
    "load_specs",
    "notebook_hash",
    "quick_specs",
    "report_grid",
    "report_header",
    "run_counts",
    "write_index",
]
