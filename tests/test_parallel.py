"""The shared map over jobs: here, on a local process pool, and on Dask."""

from __future__ import annotations

import operator

import pytest

from fewclip.parallel import map_jobs


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
