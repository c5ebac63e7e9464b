"""One configuration per comparison: the paper reports read a claim's settings from the
ledger through fewclip.comparisons, so they run the very configurations the claims report
runs (the same runs, the same numbers)."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from fewclip import claims, comparisons
from fewclip.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = str(ROOT / "data" / "claims.csv")


def test_a_papers_rows_and_nothing_else():
    rows, backbones = comparisons.ledger("apex", CLAIMS)
    assert len(rows) and set(rows["paper"]) == {"apex"} and backbones == {}
    both, _ = comparisons.ledger(["apex", "tomm"], CLAIMS)
    assert set(both["paper"]) == {"apex", "tomm"}
    with pytest.raises(ValueError, match="no claim of paper"):
        comparisons.ledger("no_such_paper", CLAIMS)


def test_a_paper_report_runs_the_claims_reports_configurations():
    base = RunConfig(augment_views=10, allow_fewer=True)
    backbones = {"rn": "tiny-emoji-rn", "vit": "tiny-emoji-vit"}
    rows, configs = comparisons.ledger_runs("apex", base, [1, 2], backbones, claims_file=CLAIMS)
    everything, _ = claims.at_scale(claims.load(CLAIMS))
    mine = everything[everything["paper"] == "apex"].reset_index(drop=True)
    assert configs == claims.configs(mine, base, [1, 2], backbones)
    epochs = {c.options.get("epochs") for c in configs if c.method in ("apex", "coop")}
    # the ledger's schedules (4 epochs for the ablations, the official one for the Table 2
    # rows: no epochs option), never the report's own
    assert epochs == {4, None}
    mapped, configs = comparisons.ledger_runs(
        "apex", base, [1], backbones, claims_file=CLAIMS, dataset_map={"fashion_mnist": "x"}
    )
    assert any("x" in ds for ds in mapped["datasets"]) and "x" in {c.dataset for c in configs}


def test_the_claims_report_defaults_are_the_ledger_base():
    """A paper report runs ledger claims with LEDGER_BASE: the claims report must too."""
    notebook = nbformat.read(ROOT / "notebooks" / "claims.ipynb", as_version=4)
    defaults = {}
    for line in notebook.cells[1].source.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and " = " in rest:
            value = rest.split(" = ", 1)[1].split("  #")[0]
            try:
                defaults[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
    for key, value in comparisons.LEDGER_BASE.items():
        assert defaults[key] == value, key


def test_settings_say_each_sides_method_and_options():
    rows, _ = comparisons.ledger("apex", CLAIMS)
    table = comparisons.settings(rows)
    assert list(table["id"]) == list(rows["id"])
    pinned = [bool(o.get("epochs")) for o in rows["a_options"]]
    assert list(table["A"].str.contains("epochs=4")) == pinned
    assert "Extra setting" in comparisons.extra_setting_note("official epochs.")
