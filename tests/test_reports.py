"""Report builds on small fixture notebooks: index, failures, reuse, Dask, and a browser check.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y
chromium chromium-driver``) and ``selenium`` (the ``dev`` extra). It fails, not skips,
when they are missing; ``FEWCLIP_SKIP_BROWSER=1`` skips it on purpose (CI does not set it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

from fewclip.cli import cmd_reports as main
from fewclip.reports import (
    NOTEBOOKS,
    PAPER_REPORTS,
    PATH_PARAMETERS,
    ReportSpec,
    build_reports,
    default_specs,
    kernel_python,
    load_manifest,
    load_specs,
    notebook_hash,
    report_grid,
)
from fewclip.reports.index import _git_commit, _ledger_rows

REPO = Path(__file__).resolve().parents[1]

PARAMETERS = """\
backbone = "tiny-emoji-rn"
pretrained = "default"
device = "auto"
data_root = "data"
cache_dir = "cache"
results = "runs/results.sqlite"
output_dir = "out"
workers = 1
scheduler = None
value = 1
"""

GOOD = [
    "import sys\nfrom pathlib import Path\nprint(sys.executable)",
    "with open(Path(output_dir) / 'executions.txt', 'a') as f:\n"
    "    f.write(f'{value} {backbone} {pretrained} {data_root}\\n')\n"
    "(Path(output_dir) / f'value-{value}.csv').write_text('saved')\n"
    "with open(Path(output_dir).parent / (Path(output_dir).name + '.log'), 'a') as f:\n"
    "    f.write('executed\\n')  # outside the folder the builder empties: counts builds",
    "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 3, 2])\nplt.show()",
    "import pandas as pd\npd.DataFrame({'method': ['a', 'b'], 'accuracy': [50.0, 60.0]})",
    "from fewclip import notebook as nb\nnb.show_conclusions(['The good report concludes 42.'])",
]
BAD = ["print('before the error')", "raise ValueError('boom in cell 2')", "print('never here')"]
QUICK = ["-p", "backbone", "fewclip-test-rn", "-p", "pretrained", "none"]


def write_notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Fixture"), params]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """A spec file (failing report first), the paths, and the CLI's exit status."""
    root = tmp_path_factory.mktemp("reports")
    good = write_notebook(root / "good.ipynb", GOOD)
    write_notebook(root / "bad.ipynb", BAD)
    specs = [
        {"name": "bad", "notebook": str(root / "bad.ipynb")},
        {"name": "good", "notebook": str(good), "title": "Good report"},
        {"name": "good", "notebook": str(good), "grid": {"value": [2]}},
    ]
    (root / "specs.json").write_text(json.dumps(specs))
    argv = ["--spec", str(root / "specs.json"), "--out", str(root / "out")]
    argv += ["--data-root", str(root / "data"), "--cache-dir", str(root / "cache")]
    argv += ["--results", str(root / "runs" / "results.sqlite"), "--no-progress", *QUICK]
    status = main(argv)
    return {"root": root, "out": root / "out", "argv": argv, "status": status, "good": good}


def executions(out: Path, name: str) -> list[str]:
    """What the latest build of the report wrote (its files folder is emptied per build)."""
    return (out / f"{name}_files" / "executions.txt").read_text().splitlines()


def builds(out: Path, name: str) -> int:
    """How many times the report's notebook ran (a log beside its files folder)."""
    return len((out / f"{name}_files.log").read_text().splitlines())


def index_rows(out: Path) -> dict[str, dict]:
    soup = BeautifulSoup((out / "index.html").read_text(), "html.parser")
    rows = {}
    for tr in soup.select("tr[data-report]"):
        link = tr.find("a")
        rows[tr["data-report"]] = {
            "status": tr["data-status"],
            "href": link["href"] if link else None,
            "text": tr.get_text(" ", strip=True),
        }
    return rows


def test_index_lists_every_report(fixture):
    out = fixture["out"]
    rows = index_rows(out)
    assert list(rows) == ["bad", "good", "good-value2"]
    assert [r["status"] for r in rows.values()] == ["failed", "ok", "ok"]
    for name, row in rows.items():
        assert row["href"] == f"{name}.html" and (out / row["href"]).exists()
        assert (out / f"{name}.ipynb").exists()
    assert "Good report" in rows["good"]["text"] and "value=2" in rows["good-value2"]["text"]
    assert "good_files/executions.txt" in rows["good"]["text"]  # what the notebook saved
    assert not (out / "bad_files").exists()  # nothing saved: no empty folder
    assert re.search(r"\d\.\d s", rows["good"]["text"])  # a duration
    header = (out / "index.html").read_text()
    assert "backbone=fewclip-test-rn" in header and "pretrained=none" in header


def test_parameters_and_kernel(fixture):
    out, root = fixture["out"], fixture["root"]
    assert executions(out, "good") == [f"1 fewclip-test-rn none {root / 'data'}"]
    assert executions(out, "good-value2")[0].startswith("2 fewclip-test-rn none ")
    nb = nbformat.read(out / "good.ipynb", as_version=4)
    printed = next(c for c in nb.cells if "sys.executable" in c.source).outputs[0]["text"]
    assert printed.strip() == sys.executable  # the kernel runs this interpreter (the venv's)
    entry = load_manifest(out)["good"]
    assert all(Path(entry["parameters"][k]).is_absolute() for k in PATH_PARAMETERS)


def test_a_failing_notebook_is_reported_and_the_build_goes_on(fixture):
    out = fixture["out"]
    assert fixture["status"] == 1
    entry = load_manifest(out)["bad"]
    assert entry["status"] == "failed" and entry["error"] == "ValueError: boom in cell 2"
    assert "ValueError: boom in cell 2" in index_rows(out)["bad"]["text"]
    nb = nbformat.read(out / "bad.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "before the error" in outputs and "boom in cell 2" in outputs
    assert "never here" not in outputs
    assert "boom in cell 2" in (out / "bad.html").read_text()
    assert load_manifest(out)["good-value2"]["status"] == "ok"  # built after the failure


def test_specs_grid_and_hash(tmp_path, fixture):
    specs = load_specs(fixture["root"] / "specs.json")
    assert [s.name for s in specs] == ["bad", "good", "good-value2"]
    assert specs[2].parameters == {"value": 2}
    grid = report_grid(ReportSpec("dual", "dual.ipynb", {"a": 1}), shots=[[1], [16]], seed=[3])
    assert [s.name for s in grid] == ["dual-shots1-seed3", "dual-shots16-seed3"]
    assert grid[1].parameters == {"a": 1, "shots": [16], "seed": 3}
    # outputs and metadata do not change the hash; a source edit does
    nb = nbformat.read(fixture["out"] / "good.ipynb", as_version=4)
    assert notebook_hash(fixture["out"] / "good.ipynb") != notebook_hash(fixture["good"])
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nbformat.write(nb, tmp_path / "executed.ipynb")
    assert notebook_hash(tmp_path / "executed.ipynb") == notebook_hash(fixture["good"])
    assert [s.name for s in default_specs()] == list(PAPER_REPORTS)
    with pytest.raises(ValueError, match="unknown report"):
        default_specs(["nope"])
    with pytest.raises(ValueError, match="repeat"):
        build_reports([specs[0], specs[0]], tmp_path)


def test_the_paper_notebooks_take_the_builder_parameters():
    """The registered notebooks that exist declare what the builder passes them."""
    import papermill as pm

    present = [n for n, (file, _) in NOTEBOOKS.items() if (REPO / "notebooks" / file).exists()]
    if not present:
        pytest.skip("no notebook of fewclip.reports.NOTEBOOKS in notebooks/ yet")
    wanted = {*PATH_PARAMETERS, "backbone", "pretrained", "device", "workers", "scheduler"}
    for name in present:
        declared = pm.inspect_notebook(str(REPO / "notebooks" / NOTEBOOKS[name][0]))
        assert wanted <= set(declared), f"{name}: missing {sorted(wanted - set(declared))}"


def test_a_kernel_of_another_interpreter_is_flagged(tmp_path, monkeypatch):
    assert kernel_python("python3") == sys.executable
    spec = tmp_path / "jupyter" / "kernels" / "python3" / "kernel.json"
    spec.parent.mkdir(parents=True)
    argv = ["/opt/other/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.write_text(json.dumps({"argv": argv, "display_name": "other", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert kernel_python("python3") == "/opt/other/bin/python"
    missing = ReportSpec("missing", str(tmp_path / "missing.ipynb"))
    paths = {k: tmp_path / k for k in ("data_root", "cache_dir", "results")}
    with pytest.warns(UserWarning, match="/opt/other/bin/python"):
        frame = build_reports([missing], tmp_path / "out", progress=False, **paths)
    assert frame["error"].iloc[0].endswith("missing.ipynb not found")


def test_browser_shows_figures_and_tables(fixture):
    """Render a built report and the index in headless Chromium."""
    driver = _chromium()
    try:
        driver.get((fixture["out"] / "good.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.src.slice(0, 22), i.complete,"
            " i.naturalWidth, i.getBoundingClientRect().width, i.getBoundingClientRect().height])"
        )
        assert images, "no img element in the report"
        for src, complete, natural, width, height in images:
            assert src == "data:image/png;base64,"
            assert complete and natural > 0 and width > 0 and height > 0
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('table td')).map(td => td.textContent)"
        )
        assert "60.0" in cells
        driver.get((fixture["out"] / "index.html").as_uri())
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr[data-report]')).map(r =>"
            " [r.dataset.report, r.querySelector('a').getBoundingClientRect().width])"
        )
        assert [r[0] for r in rows] == ["bad", "good", "good-value2"]
        assert all(width > 0 for _, width in rows)
    finally:
        driver.quit()


def test_dask_cluster(tmp_path, fixture):
    distributed = pytest.importorskip("dask.distributed")
    spec = ReportSpec("on-dask", str(fixture["good"]), {"value": 9})
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        frame = build_reports(
            [spec],
            tmp_path,
            data_root=tmp_path / "data",
            cache_dir=tmp_path / "cache",
            results=tmp_path / "results.sqlite",
            scheduler=client,
            progress=False,
        )
    assert frame["status"].tolist() == ["ok"]
    assert executions(tmp_path, "on-dask")[0].startswith("9 ")
    assert list(index_rows(tmp_path)) == ["on-dask"]


def test_published_html_hides_code_and_names_commit_and_model(fixture):
    html = (fixture["out"] / "good.html").read_text()
    assert "print(sys.executable)" not in html  # the code is hidden ...
    assert "code cells are hidden" in html and 'href="good.ipynb"' in html  # ... and findable
    assert "fewclip-test-rn" in html and "at commit" in html
    assert "overflow-x: auto" in html  # wide tables scroll inside the page
    assert "td { white-space: nowrap; }" in html  # numbers never wrap mid-digit
    # the conclusions the notebook wrote last open the page, before the provenance line
    first = html.index("The good report concludes 42.")
    assert first < html.index("at commit") and 'href="index.html"' in html
    assert 'href="claims.html"' in html  # every paper report links back to the ledger
    nb = nbformat.read(fixture["out"] / "good.ipynb", as_version=4)
    assert any("print(sys.executable)" in c.source for c in nb.cells)  # the code is there


FAILING_RUNS = [
    "from IPython.display import Markdown, display\n"
    "from fewclip.notebook import RUNS_METADATA\n"
    "display(Markdown('*3 runs, 1 failed*'), metadata={RUNS_METADATA: {'runs': 3, 'failed': 1}})",
]
ALL_FAIL = [
    "from fewclip import notebook as nb\n"
    "cfg = nb.base_config(data_root=data_root, cache_dir=cache_dir, dataset='folder:none')\n"
    "frame = nb.run_grid([cfg, cfg.replace(seed=2)], results)",
    "print('never here')",
]


def test_failed_runs_are_counted_and_all_failed_fails(tmp_path):
    partial = write_notebook(tmp_path / "partial.ipynb", FAILING_RUNS)
    allfail = write_notebook(tmp_path / "allfail.ipynb", ALL_FAIL)
    frame = build_reports(
        [ReportSpec("partial", str(partial)), ReportSpec("allfail", str(allfail))],
        tmp_path / "out",
        data_root=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        results=tmp_path / "r.sqlite",
        progress=False,
    ).set_index("name")
    assert frame.loc["partial", "status"] == "ok"
    assert frame.loc["partial", "failed_runs"] == 1 and frame.loc["partial", "runs"] == 3
    assert frame.loc["allfail", "status"] == "failed"
    assert "every run so far failed (2 of 2)" in frame.loc["allfail", "error"]
    rows = index_rows(tmp_path / "out")
    assert "1 of 3 runs failed" in rows["partial"]["text"]
    assert rows["allfail"]["status"] == "failed"
    top = (tmp_path / "out" / "partial.html").read_text()
    assert "1 of 3 runs FAILED" in top
    assert top.index("1 of 3 runs FAILED") < top.index("3 runs, 1 failed")  # first lines


def test_an_output_dir_the_user_names_is_never_emptied(tmp_path):
    """Only the builder's own ``<name>_files`` folder is emptied before a build."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    cells = ["from pathlib import Path\n(Path(output_dir) / 'made.txt').write_text('x')"]
    notebook = write_notebook(tmp_path / "own.ipynb", cells)
    frame = build_reports(
        [ReportSpec("own", str(notebook), {"output_dir": str(mine)})],
        tmp_path / "out",
        data_root=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        results=tmp_path / "r.sqlite",
        progress=False,
        force=True,
    )
    assert frame["status"].tolist() == ["ok"]
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt", "made.txt"]


def test_project_notebooks_get_paths_relative_to_the_root(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    cells = [
        "from fewclip import notebook as nb\n"
        "(nb.output_dir(output_dir) / 'where.txt').write_text(str(nb.resolve(data_root)))"
    ]
    notebook = write_notebook(project / "notebooks" / "rel.ipynb", cells)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        frame = build_reports([ReportSpec("rel", "notebooks/rel.ipynb")], "reports", progress=False)
    finally:
        os.chdir(cwd)
    assert frame["status"].tolist() == ["ok"], frame["error"].tolist()
    params = load_manifest(project / "reports")["rel"]["parameters"]
    assert params["data_root"] == "data" and params["output_dir"] == "reports/rel_files"
    assert params["results"] == "runs/results.sqlite"
    executed = (project / "reports" / "rel.ipynb").read_text()
    assert str(tmp_path) not in executed  # no machine's folders in the injected cell
    assert (project / "reports" / "rel_files" / "where.txt").read_text() == str(project / "data")
    assert notebook.is_file()


def test_rebuild_skips_finished_reports_and_force_reexecutes(fixture):
    """Last: it changes the fixture's build."""
    out, argv = fixture["out"], fixture["argv"]
    before = load_manifest(out)
    assert main(argv) == 1  # the failing report is tried again; the others are up to date
    after = load_manifest(out)
    for name in ("good", "good-value2"):
        assert after[name]["built_at"] == before[name]["built_at"]
        assert builds(out, name) == 1
    assert after["bad"]["started_at"] >= before["bad"]["built_at"]

    good = ReportSpec("good", str(fixture["good"]), {"value": 7}, "Good report")
    quick = {"backbone": "fewclip-test-rn", "pretrained": "none"}
    common = {
        k: load_manifest(out)["good"]["parameters"][k]
        for k in ("data_root", "cache_dir", "results")
    }
    build = dict(out=out, overrides=quick, progress=False, **common)
    changed = build_reports([good], **build)  # another parameter value: executed
    assert changed["skipped"].tolist() == [False] and builds(out, "good") == 2
    # the previous build's files are gone: only what this build saved is published
    saved = sorted(p.name for p in (out / "good_files").iterdir())
    assert saved == ["executions.txt", "value-7.csv"]
    assert len(executions(out, "good")) == 1  # the appended file started afresh
    assert load_manifest(out)["good"]["files"] == [f"good_files/{n}" for n in saved]
    assert build_reports([good], **build)["skipped"].tolist() == [True]
    forced = build_reports([good], force=True, **build)
    assert forced["skipped"].tolist() == [False] and builds(out, "good") == 3
    assert list(index_rows(out)) == ["good", "bad", "good-value2"]  # earlier reports stay listed


def _chromium():
    if os.environ.get("FEWCLIP_SKIP_BROWSER") == "1":
        pytest.skip("FEWCLIP_SKIP_BROWSER=1")
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (binary, chromedriver) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"{missing} not found: install them with `apt-get install -y chromium "
            "chromium-driver` (or set FEWCLIP_SKIP_BROWSER=1 to skip this test)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,900")
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")  # no CDN waits: offline
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    return driver


def test_the_commit_a_report_names_says_when_the_code_was_not_committed(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "lib" / "w.txt").write_text("weights v1")
    (tmp_path / "reports" / "r.html").write_text("old report")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(tmp_path)
    assert _git_commit() == head
    (tmp_path / "reports" / "r.html").write_text("rebuilt report")  # the build's own output
    (tmp_path / "lib" / "new.py").write_text("untracked")
    assert _git_commit() == head
    (tmp_path / "lib" / "w.txt").write_text("weights v2")  # built from uncommitted weights
    assert _git_commit() == f"{head}+uncommitted"


def test_the_index_colours_each_verdict_by_a_css_class(tmp_path):
    (tmp_path / "claims_files").mkdir()
    verdicts = ["supported", "contradicted", "inconclusive at this scale", "untested: A = B"]
    listed = [*verdicts, "not run", "contradicted"]  # counts not in the claims' order
    rows = "".join(f"c{i},{v},1.0,0.5,1.5\n" for i, v in enumerate(listed))
    (tmp_path / "claims_files" / "verdicts.csv").write_text(
        "id,verdict,effect,ci_low,ci_high\n" + rows
    )
    ledger, line = _ledger_rows(tmp_path, {"status": "ok"})
    css = [r["css"] for r in ledger]
    assert css == [
        "supported",
        "contradicted",
        "inconclusive",
        "untested",
        "notrun",
        "contradicted",
    ]
    # the claims report's summary line, verdicts in its fixed order (not by count)
    assert line == (
        "6 claims: 1 supported, 2 contradicted, 1 inconclusive at this scale, "
        "1 untested: A = B, 1 not run"
    )
