"""Call one function on many inputs: in this process, on a local process pool, or on Dask.

:func:`map_jobs` submits every input at once (:mod:`fewclip.reports`: notebooks);
:func:`open_jobs` lets the caller submit one by one and collect results as they finish
(:mod:`fewclip.sweep`'s driver, which submits a run once it holds its lease). The
function must be picklable (defined at module level) and should report failures in its
return value rather than raise, so that one bad input does not stop the others.

Interruption (local pool): the pool's workers ignore SIGINT, so Ctrl-C reaches only the
parent, which cancels every queued job, terminates the running ones (a job's result is
used only once it has finished, so a stopped job leaves nothing behind) and re-raises
``KeyboardInterrupt``; a second Ctrl-C while it does so exits at once (status 130). Workers
die with their parent: on Linux the kernel kills them when it dies (``PR_SET_PDEATHSIG``),
elsewhere each worker notices within a second that its parent is gone and exits.

Ctrl-C is latched while jobs are open: Python raises ``KeyboardInterrupt`` in whatever
code runs at that moment, and when that is a callback whose exceptions are ignored (a
garbage-collector callback of ``distributed``, a ``__del__``) it would be printed as
"Exception ignored", break the callback's own state, and be lost, so the jobs would run
on. Inside such a callback the latch only marks the jobs interrupted; elsewhere it raises
as usual; either way the next :meth:`Jobs.finished` raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from multiprocessing import get_context
from typing import Any

#: Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE_S = 3.0


class Jobs:
    """Jobs submitted one by one and collected as they finish (see :func:`open_jobs`).

    ``submit(i, *args)`` starts ``fn(*args)`` under the index ``i``; ``finished(timeout)``
    waits up to ``timeout`` seconds for at least one job and returns every ``(i, result,
    error)`` finished meanwhile: ``error`` is None, or the exception that ended the job
    without a result (a worker lost with its node, a broken pool); ``len(jobs)`` counts
    the jobs not yet collected.
    """

    def __init__(self, fn: Callable[..., Any], start: Callable[..., Any], name: str) -> None:
        self._fn, self._start, self._name = fn, start, name
        self._tag = uuid.uuid4().hex[:8]
        self._done: queue.Queue = queue.Queue()
        self._futures: dict[int, Any] = {}
        self._interrupted = False  # set by the Ctrl-C latch (see the module docstring)

    def submit(self, i: int, *args: Any) -> None:
        future = self._start(self._fn, *args, key=f"{self._name}-{self._tag}-{i}")
        self._futures[i] = future
        future.add_done_callback(lambda f: self._done.put((i, f)))

    def finished(self, timeout: float | None = None) -> list[tuple[int, Any, BaseException | None]]:
        if self._interrupted:  # a Ctrl-C that was raised where it was swallowed
            raise KeyboardInterrupt
        out = []
        try:
            out.append(self._done.get(timeout=timeout))
            while True:
                out.append(self._done.get_nowait())
        except queue.Empty:
            pass
        rows = []
        for i, future in out:
            del self._futures[i]
            try:
                rows.append((i, future.result(), None))
            except Exception as e:  # the job, its worker or the pool failed
                rows.append((i, None, e))
        return rows

    def __len__(self) -> int:
        return len(self._futures)


class _Done:
    """A finished in-process job, shaped like a future."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self._result, self._error = result, error

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result


def _here(fn: Callable[..., Any], *args: Any, key: str) -> _Done:
    try:
        return _Done(fn(*args))
    except Exception as e:
        return _Done(error=e)


@contextmanager
def open_jobs(
    fn: Callable[..., Any],
    *,
    workers: int = 1,
    scheduler: Any = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    name: str = "fewclip",
) -> Iterator[Jobs]:
    """A :class:`Jobs` that runs ``fn`` on Dask, a local process pool, or here.

    ``scheduler``: a Dask scheduler address (``tcp://host:8786``, e.g. of a dask-jobqueue
    Slurm cluster) or a ``distributed.Client``; the workers need fewclip installed and
    the paths in the jobs visible. Otherwise ``workers > 1``: a pool of spawned local
    processes, each started with ``initializer(*initargs)``. Otherwise: here, each job at
    its ``submit``. Leaving the block by an exception (Ctrl-C: ``KeyboardInterrupt``)
    cancels the queued jobs and stops the running ones (see the module docstring).
    """
    if scheduler is not None:
        opened = _dask_jobs(fn, scheduler, name)
    elif workers > 1:
        opened = _pool_jobs(fn, workers, initializer, initargs, name)
    else:
        opened = nullcontext(Jobs(fn, _here, name))
    with opened as jobs, _ctrl_c_latched(jobs):
        yield jobs


@contextmanager
def _ctrl_c_latched(jobs: Jobs) -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` as usual and also marks ``jobs`` interrupted."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # Ctrl-C is someone else's (ignored, or a handler of the caller's)
        return

    def latch(signum, frame):
        jobs._interrupted = True
        if not _in_ignoring_callback(frame):
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, latch)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _in_ignoring_callback(frame: Any) -> bool:
    """Whether ``frame`` runs inside a callback whose exceptions Python ignores: a
    garbage-collector callback (``gc.callbacks``) or a ``__del__``."""
    codes = set()
    for callback in gc.callbacks:
        function = getattr(callback, "__func__", callback)
        if hasattr(function, "__code__"):
            codes.add(function.__code__)
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


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

    Where the jobs run: see :func:`open_jobs`. A job that raised (or whose worker was lost)
    raises here, after the queued jobs are cancelled. On ``KeyboardInterrupt`` (Ctrl-C)
    queued jobs are cancelled and running ones stopped before it propagates.
    """
    with open_jobs(
        fn,
        workers=workers,
        scheduler=scheduler,
        initializer=initializer,
        initargs=initargs,
        name=name,
    ) as running:
        for i, job in enumerate(jobs):
            running.submit(i, *job)
        while len(running):
            for i, result, error in running.finished(timeout=1.0):
                if error is not None:
                    raise error
                on_done(i, result)


@contextmanager
def _pool_jobs(fn, workers, initializer, initargs, name) -> Iterator[Jobs]:
    pool = ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_worker_start,
        initargs=(os.getpid(), initializer, initargs),
    )

    def start(fn, *args, key):
        # Workers are spawned during submit: see _sigint_held.
        with _sigint_held():
            return pool.submit(fn, *args)

    try:
        yield Jobs(fn, start, name)
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile: a worker spawned now inherits the blocked
    mask across fork and exec, so it ignores Ctrl-C from its first instruction (until
    :func:`_worker_start` ignores SIGINT for good), and a Ctrl-C that reaches this process
    meanwhile stays pending and is delivered when the block ends, not lost. (Where signal
    masks are not available, SIGINT is ignored meanwhile, and such a Ctrl-C is lost.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if hasattr(signal, "pthread_sigmask"):
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
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
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while it spawned us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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


@contextmanager
def _dask_jobs(fn, scheduler, name) -> Iterator[Jobs]:
    from dask.distributed import Client

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)

    def start(fn, *args, key):
        return client.submit(fn, *args, pure=False, key=key)

    jobs = Jobs(fn, start, name)
    try:
        yield jobs
    except BaseException:
        if jobs._futures:
            client.cancel(list(jobs._futures.values()))
        raise
    finally:
        if client is not scheduler:
            client.close()
