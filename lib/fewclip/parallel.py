"""Call one function on many inputs: in this process, on a local process pool, or on Dask.

Shared by :mod:`fewclip.sweep` (runs) and :mod:`fewclip.reports` (notebooks). The
function must be picklable (defined at module level) and should report failures in its
return value rather than raise, so that one bad input does not stop the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any


def map_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    on_done: Callable[[int, Any], None],
    *,
    workers: int = 1,
    scheduler: Any = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    name: str = "fewclip",
) -> None:
    """Call ``fn(*jobs[i])`` for every ``i``; ``on_done(i, result)`` as each one finishes.

    ``scheduler``: a Dask scheduler address (``tcp://host:8786``, e.g. of a dask-jobqueue
    Slurm cluster) or a ``distributed.Client``; the workers need fewclip installed and
    the paths in ``jobs`` visible. Otherwise ``workers > 1``: a pool of spawned local
    processes, each started with ``initializer(*initargs)``. Otherwise: here, in order.
    """
    if scheduler is not None:
        _map_dask(fn, jobs, on_done, scheduler, name)
    elif workers > 1:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs
        ) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                on_done(futures[future], future.result())
    else:
        for i, job in enumerate(jobs):
            on_done(i, fn(*job))


def _map_dask(fn, jobs, on_done, scheduler, name) -> None:
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    tag = uuid.uuid4().hex[:8]
    try:
        futures = [
            client.submit(fn, *job, pure=False, key=f"{name}-{tag}-{i}")
            for i, job in enumerate(jobs)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        for future in dask_completed(futures):
            on_done(index[future.key], future.result())
    finally:
        if client is not scheduler:
            client.close()
