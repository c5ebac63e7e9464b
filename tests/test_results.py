"""Results store and run configuration: keys, skip/force semantics, no partial rows."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from fewclip.config import RunConfig
from fewclip.results import ResultStore


def record(key: str, acc: float = 50.0, **extra) -> dict:
    return {
        "run_key": key,
        "method": "tip_adapter",
        "dataset": "dtd",
        "shots": 16,
        "seed": 1,
        "accuracy": acc,
        "config": {"method": "tip_adapter"},
        "options": {"alpha": 1.0},
        "chosen": {"beta": 5.5},
        "metrics": {"per_class": [1.0, 0.0]},
        **extra,
    }


def test_round_trip_and_frame(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.add(record("a"))
    store.add(record("b", acc=60.0))
    assert len(store) == 2 and store.has("a") and not store.has("c")
    row = store.get("b")
    assert row["accuracy"] == 60.0 and row["metrics"]["per_class"] == [1.0, 0.0]
    frame = ResultStore(tmp_path / "results.sqlite").to_frame()
    assert list(frame["run_key"]) == ["a", "b"]
    assert frame["chosen.beta"].tolist() == [5.5, 5.5] and frame["options.alpha"].iloc[0] == 1.0


def test_duplicate_key_keeps_the_first_row_unless_replaced(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.add(record("a", acc=1.0))
    assert store.add(record("a", acc=2.0)) is False  # not an error: the first row stays
    assert store.get("a")["accuracy"] == 1.0
    store.add(record("a", acc=2.0), replace=True)
    assert store.get("a")["accuracy"] == 2.0 and len(store) == 1


def test_a_failed_write_leaves_no_partial_row(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    bad = record("x")
    bad["metrics"] = {"not json": object()}  # serialised with default=str: fine
    store.add(bad)
    broken = record("y")
    broken["accuracy"] = object()  # sqlite cannot bind this: the insert fails as a whole
    with pytest.raises(sqlite3.ProgrammingError):
        store.add(broken)
    assert not store.has("y") and len(store) == 1


def _writer(path: str, start: int) -> None:
    store = ResultStore(path)
    for i in range(start, start + 20):
        store.add(record(f"k{i}"))


def test_concurrent_writers(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultStore(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(ResultStore(path)) == 40


def test_run_key_covers_results_not_locations():
    base = RunConfig(method="tip_adapter", dataset="dtd", shots=4, seed=1)
    key = base.run_key("rn|abc", "data1")
    assert (
        base.replace(data_root="/elsewhere", cache_dir="/tmp/c", device="cpu").run_key(
            "rn|abc", "data1"
        )
        == key
    )
    assert base.replace(shots=8).run_key("rn|abc", "data1") != key
    assert base.replace(options={"alpha": 2.0}).run_key("rn|abc", "data1") != key
    assert base.replace(selection="test").run_key("rn|abc", "data1") != key
    assert base.run_key("rn|def", "data1") != key  # other weights
    assert base.run_key("rn|abc", "data2") != key  # other data


def test_config_validation_and_dict_round_trip():
    with pytest.raises(ValueError, match="unknown protocol"):
        RunConfig(protocol="zero")
    with pytest.raises(ValueError, match="unknown selection"):
        RunConfig(selection="train")
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        RunConfig.from_dict({"shotz": 3})
    cfg = RunConfig(method="dual_adapter", options={"epochs": 3})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
