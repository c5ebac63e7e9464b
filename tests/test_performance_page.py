"""docs/performance.md is generated from benchmarks/results/*.csv and kept current."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_page_is_what_the_csv_files_give():
    wp = _load("write_performance")
    assert wp.main(["--check"]) == 0, "run python benchmarks/write_performance.py"


def test_the_latest_row_of_each_setting_and_metric_wins():
    wp = _load("write_performance")
    rows = [
        {"date": "2026-01-02", "setting": "a", "metric": "t", "value": "2 s"},
        {"date": "2026-01-01", "setting": "a", "metric": "t", "value": "1 s"},
        {"date": "2026-01-02", "setting": "a", "metric": "t", "value": "3 s"},
        {"date": "2026-01-01", "setting": "b", "metric": "t", "value": "4 s"},
    ]
    assert [r["value"] for r in wp.current(rows)] == ["3 s", "4 s"]


def test_append_rows_stamps_date_commit_and_machine(tmp_path):
    rc = _load("results_csv")
    rows = [{"setting": "x", "metric": "fit", "value": "1.0 s"}]
    rc.append_rows("demo", rows, model="tiny-emoji-rn version 5", results=tmp_path)
    rc.append_rows("demo", rows, model="tiny-emoji-rn version 5", results=tmp_path)
    with (tmp_path / "demo.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 2 and tuple(written[0]) == rc.FIELDS
    assert written[0]["date"][:2] == "20" and written[0]["commit"] and written[0]["machine"]
    assert written[0]["model"] == "tiny-emoji-rn version 5" and written[0]["value"] == "1.0 s"
