"""Call one function on many inputs: in this process, on a local process pool, or on Dask.

Shared by :mod:`fewclip.sweep` (runs) and :mod:`fewclip.reports` (notebooks). The
function must be picklable (defined at module level) and should report failures in its
return value rather than raise, so that one bad input does not stop the others.

Interruption (local pool): the pool's workers ignore SIGINT, so Ctrl-C reaches only the
parent, which cancels every queued job, terminates the running ones (a run writes its
result only when it has finished, so a stopped run leaves nothing behind) and re-raises
``KeyboardInterrupt``; a second Ctrl-C while it does so exits at once (status 130). Workers
die with their parent: on Linux the kernel kills them when it dies (``PR_SET_PDEATHSIG``),
elsewhere each worker notices within a second that its parent is gone and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

#: Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE_S = 3.0


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
    On ``KeyboardInterrupt`` (Ctrl-C) queued jobs are cancelled and running ones stopped
    (see the module docstring) before it propagates.
    """
    if scheduler is not None:
        _map_dask(fn, jobs, on_done, scheduler, name)
    elif workers > 1:
        _map_pool(fn, jobs, on_done, workers, initializer, initargs)
    else:
        for i, job in enumerate(jobs):
            on_done(i, fn(*job))


def _map_pool(fn, jobs, on_done, workers, initializer, initargs) -> None:
    pool = ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_worker_start,
        initargs=(os.getpid(), initializer, initargs),
    )
    try:
        futures = {}
        # Workers are spawned during submit; a SIGINT disposition of SIG_IGN is inherited
        # across exec, so they ignore Ctrl-C from their first instruction.
        with _sigint_ignored():
            for i, job in enumerate(jobs):
                futures[pool.submit(fn, *job)] = i
        for future in as_completed(futures):
            on_done(futures[future], future.result())
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and terminate the workers; a second SIGINT meanwhile exits now."""
    processes = list((getattr(pool, "_processes", None) or {}).values())

    def exit_now(signum, frame):  # the second Ctrl-C
        for p in processes:
            if p.is_alive():
                p.kill()
        os._exit(130)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_now) if in_main else None
    try:
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _worker_start(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Pool worker set-up: leave Ctrl-C to the parent, die with it, then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _map_dask(fn, jobs, on_done, scheduler, name) -> None:
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    tag = uuid.uuid4().hex[:8]
    futures = []
    try:
        futures = [
            client.submit(fn, *job, pure=False, key=f"{name}-{tag}-{i}")
            for i, job in enumerate(jobs)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        for future in dask_completed(futures):
            on_done(index[future.key], future.result())
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        if client is not scheduler:
            client.close()
