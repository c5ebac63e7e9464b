"""The shared map over jobs: here, on a local process pool, and on Dask."""

from __future__ import annotations

import operator
import sys

import pytest

from fewclip.parallel import map_jobs, open_jobs


@pytest.mark.parametrize("workers", [1, 2])
def test_map_jobs_here_and_on_a_process_pool(workers):
    results = {}
    map_jobs(operator.add, [(1, 2), (3, 4), (5, 6)], results.__setitem__, workers=workers)
    assert results == {0: 3, 1: 7, 2: 11}


def test_map_jobs_on_dask():
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        results = {}
        map_jobs(operator.mul, [(2, 3), (4, 5)], results.__setitem__, scheduler=client)
    assert results == {0: 6, 1: 20}


def test_a_ctrl_c_inside_a_gc_callback_leaves_it_whole_and_still_stops_the_jobs(
    monkeypatch, request
):
    """Ctrl-C arriving inside a garbage-collector callback (distributed's GCDiagnosis has
    one) must neither be raised there (Python prints it as "Exception ignored", the
    callback stops half-way and breaks its own state, and the Ctrl-C is lost) nor be
    forgotten: the next collection of finished jobs raises it, so the sweep stops."""
    import gc
    import signal

    steps = []

    def swallowing_callback(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_type))
    # Python's own Ctrl-C handler, as in a fresh process (an imported library may have left
    # its own one in this test process; the latch then defers to it by design)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, before))
    with open_jobs(operator.add) as running:
        running.submit(0, 1, 2)
        gc.callbacks.append(swallowing_callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(swallowing_callback)
        assert ignored == [] and steps == ["after the signal"]
        with pytest.raises(KeyboardInterrupt):
            running.finished(timeout=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
