"""The reports index: every committed report linked, all built at one commit, each with its
model, checkpoint (file and sha256 prefix) and seeds; reports with fewer seeds than the
published ones flagged.

The committed ``reports/`` are built by ``make reports`` (``python -m fewclip.reports``) at
one commit and committed in the next one: the commit a report names is the one it was
built at, so the check is that all name the same commit, not that it is HEAD."""

from __future__ import annotations

import re
from pathlib import Path

from fewclip.backbones import file_digest, resolve_weights
from fewclip.reports import write_index
from fewclip.reports.build import report_header, report_provenance
from fewclip.reports.index import PUBLISHED_SEEDS

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def rows_of(page: str) -> dict[str, dict[str, str]]:
    """Report name -> the data-* attributes of its index row."""
    out = {}
    for match in re.finditer(r"<tr (data-report=[^>]*)>", page):
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', match[1]))
        out[attrs["report"]] = attrs
    return out


def entry(name: str, commit: str, seeds: list[int]) -> dict:
    return {
        "name": name,
        "title": name.upper(),
        "notebook": f"notebooks/{name}.ipynb",
        "status": "ok",
        "commit": commit,
        "html": f"{name}.html",
        "ipynb": f"{name}.ipynb",
        "parameters": {},
        "provenance": {
            "backbone": "tiny-emoji-rn",
            "pretrained": "default",
            "checkpoint": "tiny.pt",
            "sha256": "0123456789ab",
            "seeds": seeds,
        },
    }


def test_the_index_shows_commit_checkpoint_seeds_and_flags_the_differences(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.html").write_text("x")
        (tmp_path / f"{name}.ipynb").write_text("{}")
    published = list(PUBLISHED_SEEDS)
    write_index(tmp_path, {"a": entry("a", "abc1234", published), "b": entry("b", "abc1234", [1])})
    page = (tmp_path / "index.html").read_text()
    rows = rows_of(page)
    assert rows["a"]["commit"] == rows["b"]["commit"] == "abc1234"
    assert rows["a"]["checkpoint"] == "tiny.pt" and rows["a"]["sha256"] == "0123456789ab"
    assert rows["a"]["seeds"] == ", ".join(map(str, published)) and rows["b"]["seeds"] == "1"
    assert 'data-commits="1"' in page and 'data-fewer-seeds="1"' in page  # b: one seed
    assert f"fewer seeds than\npublished ({len(PUBLISHED_SEEDS)})" in page
    write_index(
        tmp_path, {"a": entry("a", "abc1234", published), "b": entry("b", "def5678", published)}
    )
    page = (tmp_path / "index.html").read_text()
    assert 'data-commits="2"' in page and "data-fewer-seeds" not in page


def test_a_reports_provenance_names_the_weights_file_and_its_digest():
    facts = report_provenance(str(ROOT / "notebooks" / "dual.ipynb"), {"seeds": [1, 2]})
    path = resolve_weights(facts["backbone"], facts["pretrained"])
    assert facts["checkpoint"] == Path(path).name and facts["seeds"] == [1, 2]
    assert facts["sha256"] == file_digest(path)[:12]
    header = report_header(
        "dual", {}, notebook="dual.ipynb", code=False, commit="abc1234", provenance=facts
    )
    assert f"checkpoint `{facts['checkpoint']}` (sha256 `{facts['sha256']}`)" in header
    assert "seeds 1, 2" in header


def test_a_ledger_with_two_backbones_names_both_checkpoints():
    facts = report_provenance(str(ROOT / "notebooks" / "claims.ipynb"), {})
    paths = [resolve_weights(b, "default") for b in ("tiny-emoji-rn", "tiny-emoji-vit")]
    assert facts["checkpoint"] == ", ".join(Path(p).name for p in paths)
    assert facts["sha256"] == ", ".join(file_digest(p)[:12] for p in paths)


def published_problems(folder: Path, clean: bool = True) -> list[str]:
    """What keeps the reports in ``folder`` from being one citable set: a report the index
    does not list or link, reports from several commits (or uncommitted code when
    ``clean``), a page naming another commit, a row without checkpoint or seeds."""
    page = (folder / "index.html").read_text()
    rows = rows_of(page)
    committed = sorted(p.stem for p in folder.glob("*.html") if p.name != "index.html")
    problems = [f"{n}: not in the index" for n in committed if n not in rows]
    problems += [f"{n}: not linked" for n in committed if f'href="{n}.html"' not in page]
    commits = {n: rows[n].get("commit", "") for n in committed if n in rows}
    if len(set(commits.values())) != 1 or "" in commits.values():
        problems.append(f"built at several commits: {commits}")
    for name, commit in commits.items():
        if clean and "+uncommitted" in commit:
            problems.append(f"{name}: built from uncommitted code ({commit})")
        text = (folder / f"{name}.html").read_text()
        if f"at commit <code>{commit}</code>" not in text and f"at commit `{commit}`" not in text:
            problems.append(f"{name}: its page names another commit than the index ({commit})")
        if not (rows[name].get("checkpoint") and rows[name].get("seeds")):
            problems.append(f"{name}: no checkpoint or seeds in the index")
    return problems


def test_make_reports_builds_at_the_published_seeds():
    """The committed reports are reproducible with `make reports`: it passes the seeds the
    index compares against (PUBLISHED_SEEDS) to every notebook."""
    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"^reports: .*\n\t.*\n\t(.*)$", makefile, re.MULTILINE).group(1)
    assert f"-p seeds '{list(PUBLISHED_SEEDS)}'" in command


def test_make_demo_builds_every_report_quick_and_the_index_flags_each():
    """`make demo` passes --quick: each report's quick settings are parameters its notebook
    declares (a misspelt one would be injected and ignored), with fewer seeds than the
    published ones, so the index flags every report of the demo."""
    import papermill as pm

    from fewclip.reports import PAPER_REPORTS, QUICK, default_specs, quick_specs

    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"^demo: .*\n\t.*\n\t(.*)$", makefile, re.MULTILINE).group(1)
    assert "--quick" in command.split()
    assert set(QUICK) == set(PAPER_REPORTS)
    for spec in quick_specs(default_specs(notebooks=ROOT / "notebooks")):
        declared = pm.inspect_notebook(spec.notebook)
        assert set(QUICK[spec.name]) <= set(declared), spec.name
        assert 1 <= len(spec.parameters["seeds"]) < len(PUBLISHED_SEEDS), spec.name
    claims = QUICK["claims"]
    assert len(claims["seeds"]) >= 2 and claims["row_seeds"] is False  # an interval needs 2


def test_a_build_gives_one_citable_set(tmp_path):
    """Two notebooks built together: both listed, one commit, checkpoint and seeds shown,
    the one-seed report flagged."""
    import nbformat

    from fewclip.reports import ReportSpec, build_reports

    specs = []
    for name, seeds in (("one", [1]), ("published", list(PUBLISHED_SEEDS))):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        params = nbformat.v4.new_code_cell(
            f'backbone = "fewclip-test-rn"\npretrained = "none"\nseeds = {seeds}\n'
            "data_root = None\ncache_dir = None\nresults = None\noutput_dir = None"
        )
        params.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params]
        nb.cells.append(nbformat.v4.new_code_cell("len(seeds)"))  # an Out[n] result
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        specs.append(ReportSpec(name, str(tmp_path / f"{name}.ipynb")))
    frame = build_reports(
        specs,
        tmp_path / "out",
        data_root=tmp_path,
        cache_dir=tmp_path / "c",
        results=tmp_path / "r.sqlite",
        progress=False,
    )
    assert frame["status"].tolist() == ["ok", "ok"], frame["error"].tolist()
    assert published_problems(tmp_path / "out", clean=False) == []
    rows = rows_of((tmp_path / "out" / "index.html").read_text())
    assert rows["one"]["checkpoint"] == "random init"
    assert rows["published"]["seeds"] == ", ".join(map(str, PUBLISHED_SEEDS))
    assert 'data-fewer-seeds="1"' in (tmp_path / "out" / "index.html").read_text()
    page = (tmp_path / "out" / "published.html").read_text()
    assert (
        f"<pre>{len(PUBLISHED_SEEDS)}</pre>" in page
    )  # the result, without the prompt of its hidden code
    assert not re.search(r"Out\[\d+\]", page)
    (tmp_path / "out" / "stray.html").write_text("<p>built elsewhere</p>")
    assert published_problems(tmp_path / "out", clean=False) == [
        "stray: not in the index",
        "stray: not linked",
    ]


def test_every_committed_report_is_in_the_index_and_all_come_from_one_commit():
    """Fails until reports/ is rebuilt together: make reports REPORTS_ARGS=--force (clean
    tree), then commit reports/."""
    assert published_problems(REPORTS) == []
    seeds = {
        name: row.get("seeds")
        for name, row in rows_of((REPORTS / "index.html").read_text()).items()
    }
    assert set(seeds.values()) == {", ".join(map(str, PUBLISHED_SEEDS))}, seeds


def test_the_published_ledger_states_every_caveat_in_its_conclusions():
    """The claims report opens with its conclusions, caveats included: the scale caveat, and
    whether the verdicts were repeated on a second, independently pretrained checkpoint
    (a cap on the number of sentences once cut the last one)."""
    from fewclip.reports.build import conclusion_lines

    said = conclusion_lines(REPORTS / "claims.ipynb")
    assert re.match(r"\d+ claims: ", said[0]), said[0]
    assert any(
        s.startswith("Every verdict is about this model and these offline tasks") for s in said
    )
    assert any(
        "rest on one pretraining run" in s or "independently pretrained checkpoint (" in s
        for s in said
    ), said
