"""Interruption with real processes: Ctrl-C (a real SIGINT) to a real process pool cancels
queued jobs and stops running ones within seconds; workers die with their parent; a sweep
prints one line and exits 130; stale temporary files are cleaned."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from procjobs import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    environment,
    gone,
    pool_workers,
    wait_for,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it. A test run started in
    the background by a non-interactive shell inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler, so no Ctrl-C would ever arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
        preexec_fn=default_sigint,
        **kw,
    )


def stderr_once_stopped(proc: subprocess.Popen, failure: str) -> str:
    """``proc``'s stderr once it exits; killed and ``failure`` if not within STOP_TIMEOUT_S."""
    try:
        return proc.communicate(timeout=STOP_TIMEOUT_S)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{failure} ({STOP_TIMEOUT_S:.0f} s)")


def busy_pool(tmp_path, jobs: int = 8, *extra: str):
    """A parent running ``jobs`` blocking jobs on 2 workers, once both workers are busy."""
    proc = start("import procjobs; procjobs.pool_parent()", str(tmp_path), str(jobs), *extra)
    started = lambda: sorted(p.name for p in tmp_path.glob("started-*"))  # noqa: E731
    try:
        wait_for(lambda: len(started()) >= 2, START_TIMEOUT_S, "both workers to start a job")
        workers = pool_workers(proc.pid)
    except BaseException:
        proc.kill()
        raise
    assert len(workers) == 2
    return proc, workers, started


@pytest.mark.parametrize("target", ["process group", "parent only"])
def test_ctrl_c_cancels_queued_jobs_and_stops_running_ones(tmp_path, target):
    proc, workers, started = busy_pool(tmp_path)
    if target == "process group":  # what a terminal's Ctrl-C does
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    err = stderr_once_stopped(proc, "the pool did not stop after Ctrl-C")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    wait_for(lambda: gone(workers), STOP_TIMEOUT_S, "the workers to exit")
    assert len(started()) == 2  # no queued job started after the signal
    assert not list(tmp_path.glob("done-*"))  # the running ones were stopped


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    """Workers that ignore SIGTERM keep the first Ctrl-C waiting (up to the 120 s grace the
    parent sets); the second one kills them and exits 130 at once."""
    proc, workers, started = busy_pool(tmp_path, 8, "stubborn")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(2.0)  # the parent is now waiting for its workers to stop
    assert proc.poll() is None, "the first Ctrl-C should still be waiting for the workers"
    second = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a second Ctrl-C did not exit at once")
    assert proc.returncode == 130
    assert time.monotonic() - second < 20
    wait_for(lambda: gone(workers), STOP_TIMEOUT_S, "the workers to be killed")
    assert not list(tmp_path.glob("done-*"))


def test_a_ctrl_c_while_a_worker_is_being_spawned_is_not_lost(tmp_path):
    """Workers are spawned inside ``submit``; a Ctrl-C arriving then is held until the
    spawn is done, then stops the pool. (SIGINT used to be ignored around ``submit``, and
    such a Ctrl-C was lost: the jobs ran on.)"""
    proc = start("import procjobs; procjobs.pool_parent()", str(tmp_path), "8", "ctrl-c-at-spawn")
    err = stderr_once_stopped(proc, "a Ctrl-C during a worker's spawn was lost")
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted", err
    assert not list(tmp_path.glob("done-*"))


def test_workers_die_with_their_parent(tmp_path):
    proc, workers, started = busy_pool(tmp_path)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(STOP_TIMEOUT_S)
    wait_for(lambda: gone(workers), STOP_TIMEOUT_S, "orphaned workers to exit")
    (tmp_path / "release").touch()  # a surviving worker would now finish its job
    assert len(started()) == 2 and not list(tmp_path.glob("done-*"))


def test_sweep_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """A real sweep on 2 workers: Ctrl-C once the workers are up (the runs train for
    100000 epochs, so none finishes before the signal)."""
    from fewclip.prompting.toy import coloured_squares
    from fewclip.results import ResultStore

    coloured_squares(tmp_path / "data" / "squares", num_classes=3, per_class=4, seed=0)
    spec = tmp_path / "sweep.json"
    base = {
        "method": "clip_adapter",
        "dataset": "folder:squares",
        "shots": 1,
        "backbone": "fewclip-test-rn",
        "pretrained": None,
        "options": {"epochs": 100000},
        "data_root": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "cache"),
    }
    spec.write_text(json.dumps({"base": base, "grid": {"seed": [1, 2, 3, 4, 5, 6]}}))
    store = tmp_path / "r.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fewclip.sweep", str(spec), "--workers", "2", "--no-progress"]
        + ["--results", str(store)],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        wait_for(lambda: len(pool_workers(proc.pid)) == 2, START_TIMEOUT_S, "2 workers")
        workers = pool_workers(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        r"interrupted: (\d+) of 6 runs done, rerun to resume", lines[0]
    ), err
    assert int(lines[0].split()[1]) == len(ResultStore(store))
    wait_for(lambda: gone(workers), STOP_TIMEOUT_S, "the workers to exit")
