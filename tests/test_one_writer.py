"""One writer: in a distributed sweep the driver alone reads and writes the results store
(claims, leases, rows); workers compute records and write only the feature cache, whose
entries two writers may write at once. Workers here are started so that opening a store
in them fails."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from procjobs import START_TIMEOUT_S, environment, wait_for

import fewclip.sweep
from fewclip.config import RunConfig
from fewclip.features import FeatureCache, _tmp_writer, image_features
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore
from fewclip.runner import run_key
from fewclip.sweep import run_sweep


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("one-writer")
    coloured_squares(root / "data" / "squares", num_classes=3, per_class=8, seed=0)
    return RunConfig(
        method="tip_adapter",
        dataset="folder:squares",
        backbone="fewclip-test-rn",
        pretrained=None,
        shots=2,
        augment_views=1,
        data_root=str(root / "data"),
        cache_dir=str(root / "cache"),
        progress=False,
    )


def test_pool_workers_never_open_the_store(base, tmp_path, monkeypatch):
    import procjobs

    monkeypatch.setattr(fewclip.sweep, "_worker_init", procjobs.worker_init_forbidding_store)
    store = tmp_path / "r.sqlite"
    configs = [base.replace(seed=s) for s in (1, 2, 3)]
    frame = run_sweep(configs, store, workers=2, progress=False)
    assert frame["status"].tolist() == ["done"] * 3, frame["error"].tolist()
    assert frame["skipped"].tolist() == [False] * 3
    assert len(ResultStore(store)) == 3 and len(ResultStore(store).leases()) == 0
    again = run_sweep(configs, store, progress=False)
    assert again["skipped"].tolist() == [True] * 3
    assert again["accuracy"].tolist() == frame["accuracy"].tolist()


def test_a_worker_that_opens_the_store_fails_here(base, tmp_path, monkeypatch):
    """The guard has teeth: a run body that opens the store on such a worker fails."""
    import procjobs

    monkeypatch.setattr(fewclip.sweep, "_worker_init", procjobs.worker_init_forbidding_store)
    monkeypatch.setattr(fewclip.sweep, "_compute", procjobs.compute_with_store)
    frame = run_sweep([base], tmp_path / "r.sqlite", workers=2, progress=False)
    assert frame["status"].tolist() == ["failed"]
    assert "opened the results store" in frame["error"].iloc[0]


def test_a_run_another_process_holds_is_waited_for_then_read(base, tmp_path):
    """Another driver on the same store holds a lease on the run: this sweep computes
    nothing, waits, and reads the row that driver writes."""
    store = ResultStore(tmp_path / "r.sqlite")
    config = base.replace(seed=7)
    key = run_key(config)
    with store._connect() as db:
        db.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
            (key, "other", "another-host", 1, time.time() + 3600),
        )

    def other_driver_finishes():
        time.sleep(1.0)
        store.add({"run_key": key, "method": "tip_adapter", "accuracy": 12.5, "config": {}})
        with store._connect() as db:
            db.execute("DELETE FROM leases WHERE owner = 'other'")

    other = threading.Thread(target=other_driver_finishes)
    other.start()
    t0 = time.monotonic()
    frame = run_sweep([config], store.path, workers=2, progress=False)
    other.join()
    assert time.monotonic() - t0 >= 1.0
    assert frame["skipped"].tolist() == [True] and frame["accuracy"].tolist() == [12.5]
    assert len(store) == 1 and len(store.leases()) == 0


def test_two_processes_writing_one_cache_entry_both_succeed(tmp_path):
    """Both encode the same images into one cache folder at once; each writes its own
    temporary file and renames it only when both have written: both succeed, one whole
    entry remains, no temporary file."""
    from conftest import write_images

    write_images(tmp_path / "images")
    cache = tmp_path / "cache"
    code = "import procjobs; procjobs.write_cache_entry()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache), str(tmp_path), tag],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    try:
        ready = lambda: all((tmp_path / f"ready-{t}").exists() for t in "ab")  # noqa: E731
        wait_for(ready, START_TIMEOUT_S, "both writers to start")
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=START_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    sums = [float(out) for out, _ in outs]
    assert sums[0] == sums[1]
    assert len(list(cache.rglob("*.pt"))) == 1 and not list(cache.rglob("*.tmp"))


def test_two_threads_of_one_process_writing_one_entry_both_succeed(
    test_rn, image_items, tmp_path, monkeypatch
):
    """One process (a Dask worker with two threads): the temporary names differ too."""
    results, errors = [], []

    def write():
        try:
            cache = FeatureCache(tmp_path / "cache")
            results.append(image_features(test_rn, image_items, cache, progress=False).features)
        except Exception as e:
            errors.append(e)

    monkeypatch.setattr(os, "replace", _rename_when_both_wrote())
    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 2 and torch.equal(results[0], results[1])
    cache = tmp_path / "cache"
    assert len(list(cache.rglob("*.pt"))) == 1 and not list(cache.rglob("*.tmp"))


def _rename_when_both_wrote():
    replace, arrived, both = os.replace, [], threading.Event()
    lock = threading.Lock()

    def held(src, dst):
        with lock:
            arrived.append(src)
            if len(arrived) == 2:
                both.set()
        assert both.wait(60), "the other thread never wrote"
        replace(src, dst)

    return held


def test_temporary_names_carry_their_writer():
    assert _tmp_writer("abc.pt.node_7-4242-0a1b2c3d.tmp") == ("node_7", 4242)
    assert _tmp_writer("abc.pt.4242.tmp") == (None, 4242)
    assert _tmp_writer("x.tmp") == (None, None)
