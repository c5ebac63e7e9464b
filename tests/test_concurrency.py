"""Concurrency with real processes: two sweeps of the same configurations at once compute
each run once and report no false failures; the store's leases (claims) and duplicate
writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

from procjobs import START_TIMEOUT_S, environment, wait_for

from fewclip.config import RunConfig
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore


def record(key: str, acc: float = 50.0) -> dict:
    return {"run_key": key, "method": "tip_adapter", "accuracy": acc, "config": {}}


def test_a_finished_run_written_twice_keeps_the_first_row(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.add(record("a", acc=1.0)) is True
    assert store.add(record("a", acc=2.0)) is False  # not an error
    assert store.get("a")["accuracy"] == 1.0 and len(store) == 1
    assert store.add(record("a", acc=3.0), replace=True) is True
    assert store.get("a")["accuracy"] == 3.0


def test_a_claimed_run_waits_for_its_holder_then_reads_its_row(tmp_path):
    path = tmp_path / "r.sqlite"
    holding, release, seen = threading.Event(), threading.Event(), {}

    def holder():
        store = ResultStore(path)
        with store.claim("k") as claim:
            assert claim.record is None
            holding.set()
            release.wait(60)
            store.add(record("k", acc=7.0))

    def waiter():
        with ResultStore(path).claim("k", poll=0.02) as claim:
            seen["record"] = claim.record

    a = threading.Thread(target=holder)
    a.start()
    assert holding.wait(60)
    assert len(ResultStore(path).leases()) == 1
    b = threading.Thread(target=waiter)
    b.start()
    b.join(0.5)
    assert b.is_alive()  # it waits while the holder computes
    release.set()
    a.join(60)
    b.join(60)
    assert seen["record"]["accuracy"] == 7.0
    assert len(ResultStore(path).leases()) == 0


def test_a_failed_holder_releases_its_claim(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    try:
        with store.claim("k"):
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert len(store.leases()) == 0
    with store.claim("k") as claim:  # taken at once
        assert claim.record is None and claim.waited < 5


def _plant_lease(store: ResultStore, host: str, pid: int, expires: float) -> None:
    with store._connect() as db:
        db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", ("k", "other", host, pid, expires))


def test_a_lease_of_a_dead_process_is_taken_over_at_once(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_lease(store, socket.gethostname(), dead.pid, time.time() + 3600)
    with store.claim("k") as claim:
        assert claim.record is None and claim.waited < 5


def test_an_expired_lease_is_taken_over(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    _plant_lease(store, "another-host", 1, time.time() - 1)
    with store.claim("k") as claim:
        assert claim.record is None and claim.waited < 5


def test_two_identical_sweeps_at_once_compute_each_run_once(tmp_path):
    coloured_squares(tmp_path / "data" / "squares", num_classes=3, per_class=12, seed=0)
    base = RunConfig(
        method="tip_adapter",
        dataset="folder:squares",
        backbone="fewclip-test-rn",
        pretrained=None,
        shots=2,
        augment_views=2,
        data_root=str(tmp_path / "data"),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    configs = json.dumps([base.replace(seed=s).to_dict() for s in (1, 2, 3)])
    store = str(tmp_path / "r.sqlite")
    code = "import procjobs; procjobs.run_when_released()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, configs, store, str(tmp_path), tag],
            env=environment(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    try:
        ready = lambda: all((tmp_path / f"ready-{t}").exists() for t in "ab")  # noqa: E731
        wait_for(ready, START_TIMEOUT_S, "both sweeps to start")
        (tmp_path / "go").touch()  # both start their sweep at the same moment
        for p in procs:
            p.wait(START_TIMEOUT_S * 2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = [p.stderr.read() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    a, b = (json.loads((tmp_path / f"out-{t}.json").read_text()) for t in "ab")
    assert [r["status"] for r in a + b] == ["done"] * 6, (a, b)
    # each run computed by exactly one of the two, the other read its row
    for ra, rb in zip(a, b, strict=True):
        assert sorted([ra["skipped"], rb["skipped"]]) == [False, True], (a, b)
        assert ra["accuracy"] == rb["accuracy"]
    assert len(ResultStore(store)) == 3 and len(ResultStore(store).leases()) == 0
