"""Helpers for the real-process tests (interruption, concurrency): picklable job bodies and
small parent programs started with ``python -c "import procjobs; procjobs.<name>()"``.

Not a test module: the spawned children import it by name (``tests`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil

#: Generous bounds for a loaded 2-core machine.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0  # jobs block forever, so a pass still means they were stopped


def blocking_job(i: int, folder: str) -> int:
    """Mark ``started-i``, block until ``release`` exists (at most 10 minutes), mark ``done-i``."""
    root = Path(folder)
    (root / f"started-{i}").touch()
    deadline = time.monotonic() + 600
    while not (root / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (root / f"done-{i}").touch()
    return i


def stubborn_job(i: int, folder: str) -> int:
    """:func:`blocking_job` that ignores SIGTERM (a run that does not stop when asked)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return blocking_job(i, folder)


class CtrlCWhenPickled:
    """Sends SIGINT to its process group when pickled: as a worker's start-up arguments it
    is pickled in the parent while that worker is spawned (inside ``submit``), so the
    Ctrl-C arrives at the moment a worker is being started."""

    def __reduce__(self):
        import signal

        os.killpg(os.getpgid(0), signal.SIGINT)
        return (int, ())


def ignore_arguments(*args) -> None:
    """A pool initializer that does nothing."""


def pool_parent() -> None:
    """argv: FOLDER N [stubborn | ctrl-c-at-spawn]. map_jobs(blocking_job) over N jobs on 2
    workers; exit 130 on Ctrl-C. ``stubborn``: the jobs ignore SIGTERM and the pool waits
    120 s for them before killing them, so only a second Ctrl-C ends the wait early.
    ``ctrl-c-at-spawn``: a Ctrl-C arrives while the first worker is being spawned."""
    import fewclip.parallel
    from fewclip.parallel import map_jobs

    folder, n = sys.argv[1], int(sys.argv[2])
    job, start = blocking_job, {}
    if sys.argv[3:] == ["stubborn"]:
        job = stubborn_job
        fewclip.parallel.TERMINATE_GRACE_S = 120.0
    if sys.argv[3:] == ["ctrl-c-at-spawn"]:
        start = {"initializer": ignore_arguments, "initargs": (CtrlCWhenPickled(),)}
    try:
        map_jobs(job, [(i, folder) for i in range(n)], lambda i, r: None, workers=2, **start)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def pool_workers(pid: int) -> list[psutil.Process]:
    """The spawned multiprocessing workers among ``pid``'s children."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def run_when_released() -> None:
    """argv: CONFIG_JSON STORE FOLDER TAG. Mark ``ready-TAG``, wait for ``go``, run the
    configurations in a sweep (in this process), write the frame's status/skipped/accuracy
    to ``out-TAG.json``."""
    from fewclip.config import RunConfig
    from fewclip.sweep import run_sweep

    configs = [RunConfig.from_dict(d) for d in json.loads(sys.argv[1])]
    store, folder, tag = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (folder / f"ready-{tag}").touch()
    wait_for(lambda: (folder / "go").exists(), 600, "go")
    frame = run_sweep(configs, store, progress=False)
    cols = ["status", "error", "skipped", "accuracy"]
    rows = frame.reindex(columns=cols).to_dict("records")
    (folder / f"out-{tag}.json").write_text(json.dumps(rows, default=str))


def environment() -> dict[str, str]:
    """The children's environment: this checkout's ``lib`` and ``tests`` first, one thread."""
    here = Path(__file__).resolve().parent
    paths = [str(here.parent / "lib"), str(here), os.environ.get("PYTHONPATH", "")]
    path = os.pathsep.join(p for p in paths if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def forbid_store() -> None:
    """Make opening a results store in this process an error: what a sweep's workers are
    started with in the one-writer tests (the driver alone writes the store)."""
    import fewclip.results

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"a worker (pid {os.getpid()}) opened the results store")

    fewclip.results.ResultStore.__init__ = refuse


def worker_init_forbidding_store(threads: int) -> None:
    """The sweep's pool initializer, then :func:`forbid_store`."""
    from fewclip.sweep import _worker_init

    _worker_init(threads)
    forbid_store()


def dask_setup(worker) -> None:
    """``dask worker --preload procjobs``: the worker may not open a results store."""
    forbid_store()


def held_rename(folder: Path, tag: str, writers: int = 2):
    """``os.replace`` that marks ``wrote-TAG`` and waits (at most 2 minutes) until
    ``writers`` writers have written their temporary file, then renames."""
    replace = os.replace

    def held(src, dst):
        (folder / f"wrote-{tag}").touch()
        wait_for(lambda: len(list(folder.glob("wrote-*"))) >= writers, 120, "the other writer")
        replace(src, dst)

    return held


def write_cache_entry() -> None:
    """argv: CACHE FOLDER TAG. Encode the images under FOLDER/images with the tiny random
    test backbone into the feature cache CACHE, holding the rename until the other process
    has written too; print the features' sum."""
    from fewclip.backbones import load_backbone
    from fewclip.data.base import Datum
    from fewclip.features import FeatureCache, image_features

    cache, folder, tag = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    items = [
        Datum(str(p), int(p.parent.name[-1]), p.parent.name)
        for p in sorted((folder / "images").rglob("*.png"))
    ]
    backbone = load_backbone("fewclip-test-rn", None, device="cpu")
    os.replace = held_rename(folder, tag)  # this process only writes the entry
    (folder / f"ready-{tag}").touch()
    wait_for(lambda: (folder / "go").exists(), 600, "go")
    features = image_features(backbone, items, FeatureCache(cache), progress=False)
    print(float(features.features.sum()))


def compute_with_store(config: dict) -> dict:
    """A worker body that (wrongly) opens the store: the one-writer guard's own check."""
    from fewclip.sweep import _compute, _failure

    try:
        from fewclip.results import ResultStore

        ResultStore("unused.sqlite")
    except Exception as e:
        return _failure(config, e)
    return _compute(config)
