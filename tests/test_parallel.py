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


def test_a_ctrl_c_swallowed_by_a_gc_callback_still_stops_the_jobs(monkeypatch):
    """Ctrl-C raised inside a garbage-collector callback (as distributed's GCDiagnosis
    has one) is printed as "Exception ignored" and lost; the next collection of finished
    jobs must raise it again, or the sweep runs on and exits 0."""
    import gc
    import signal

    def swallowing_callback(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_type))
    with open_jobs(operator.add) as running:
        running.submit(0, 1, 2)
        gc.callbacks.append(swallowing_callback)
        try:
            gc.collect()  # the KeyboardInterrupt is raised and ignored here
        finally:
            gc.callbacks.remove(swallowing_callback)
        assert ignored == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            running.finished(timeout=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
