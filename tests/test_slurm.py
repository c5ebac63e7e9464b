"""A real Slurm: ``fewclip sweep --slurm`` on a one-node Slurm started on this machine
(``.ci/slurm``: munged, slurmctld, slurmd; 2 CPUs), through dask-jobqueue's SLURMCluster
with 2 worker jobs whose workers may not open a results store. Every row lands once; a
worker job cancelled mid-sweep loses nothing (its run is reported, no lease is left) and a
rerun computes only the missing runs; Ctrl-C ends the sweep with one line and cancels the
cluster's jobs; Slurm is stopped at the end.

Needs root and Debian's ``slurm-wlm`` and ``munge`` (``make test`` installs them as root); elsewhere
the Slurm test is skipped with its reason, or fails where ``FEWCLIP_REQUIRE_SLURM=1`` (CI).
The option checks below need no Slurm.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procjobs import environment, wait_for
from test_interrupt import default_sigint

from fewclip.cluster import parse_slurm_options, slurm_cluster

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "slurm"
RUNS = 12
#: Bounds for a loaded 2-core machine (the sweep itself takes well under a minute).
SWEEP_TIMEOUT_S = 420.0


def test_slurm_options_parse_and_clear_errors(monkeypatch):
    assert parse_slurm_options(["account=lab", 'job_extra_directives=["--gres=gpu:1"]']) == {
        "account": "lab",
        "job_extra_directives": ["--gres=gpu:1"],
    }
    with pytest.raises(ValueError, match="expects KEY=VALUE"):
        parse_slurm_options(["account"])
    if importlib.util.find_spec("dask_jobqueue") is None:  # importing it takes over Ctrl-C
        pytest.skip("dask-jobqueue is not installed")
    ctrl_c = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs Slurm's sbatch on the PATH"), slurm_cluster():
        pass
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    with (
        pytest.raises(ValueError, match="no_such_option: not an argument"),
        slurm_cluster(no_such_option=1),
    ):
        pass
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # dask_jobqueue's import took it


def test_sweep_cli_error_is_one_line(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text("[]")
    cmd = [sys.executable, "-m", "fewclip", "sweep", str(spec), "--slurm", "--scheduler", "x"]
    out = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: give --slurm or --scheduler, not both"


def _unavailable(reason: str):
    if os.environ.get("FEWCLIP_REQUIRE_SLURM"):
        pytest.fail(f"FEWCLIP_REQUIRE_SLURM is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node Slurm (SLURM_CONF set for this process and its children)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        _unavailable("a local Slurm needs root on Linux (CI runs it: .ci/run)")
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(t)]
    if missing:
        _unavailable(
            f"Slurm is not installed ({', '.join(missing)}: apt-get install slurm-wlm munge)"
        )
    if importlib.util.find_spec("dask_jobqueue") is None:
        _unavailable("dask-jobqueue is not installed (pip install dask-jobqueue)")
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        last = (started.stderr.strip().splitlines() or ["no output"])[-1]
        subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        _unavailable(f"the local Slurm did not start ({last})")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        assert not (folder / "slurmctld.pid").exists() and not (folder / "slurmd.pid").exists()


def _jobs() -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %T"], capture_output=True, text=True, timeout=60
    )
    return [line.split()[0] for line in out.stdout.splitlines() if "RUNNING" in line]


def _rows(store: Path) -> list[str]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=60) as db:
        try:
            return [r[0] for r in db.execute("SELECT run_key FROM runs")]
        except sqlite3.OperationalError:  # the table is not there yet
            return []


def _sweep(spec: Path, store: Path, folder: Path, **popen) -> subprocess.Popen:
    env = environment()
    # a run whose worker is lost is reported, not retried elsewhere: the rerun must do it
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    preload = json.dumps(["--preload", "procjobs"])  # the workers may not open a store
    cmd = [sys.executable, "-m", "fewclip", "sweep", str(spec), "--results", str(store)]
    cmd += ["--no-progress", "--slurm", "--slurm-jobs", "2", "--slurm-cores", "1"]
    cmd += ["--slurm-memory", "2GB", "--slurm-walltime", "00:10:00", "--slurm-queue", "debug"]
    cmd += ["--slurm-option", f"worker_extra_args={preload}"]
    cmd += ["--slurm-option", f"log_directory={folder / 'logs'}"]
    cmd += ["--slurm-option", "death_timeout=30"]
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_a_sweep_on_slurm_survives_a_cancelled_worker_job(slurm, tmp_path):
    from fewclip.prompting.toy import coloured_squares
    from fewclip.results import ResultStore

    coloured_squares(tmp_path / "data" / "squares", num_classes=3, per_class=12, seed=0)
    base = {
        "method": "clip_adapter",
        "dataset": "folder:squares",
        "backbone": "fewclip-test-rn",
        "pretrained": None,
        "shots": 2,
        "options": {"epochs": 400},  # seconds a run, so that runs are in flight
        "data_root": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "cache"),
    }
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"base": base, "grid": {"seed": list(range(1, RUNS + 1))}}))
    store = tmp_path / "runs" / "results.sqlite"

    t0 = time.monotonic()
    first = _sweep(spec, store, tmp_path)
    try:
        landed = lambda: len(_rows(store)) >= 2 or first.poll() is not None  # noqa: E731
        wait_for(landed, SWEEP_TIMEOUT_S, "two runs to land")
        assert first.poll() is None, first.communicate()
        running = _jobs()
        assert len(running) == 2, running
        subprocess.run(["scancel", "--signal=KILL", "--full", running[0]], check=True, timeout=60)
        cancelled_at = len(_rows(store))
        out, err = first.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert cancelled_at < RUNS, "the sweep ended before a worker job was cancelled"
    summary = out.strip().splitlines()[0]
    rows = _rows(store)
    lost = RUNS - len(rows)
    assert len(set(rows)) == len(rows)
    assert summary == f"{len(rows)} of {RUNS} runs done (0 from the store), {lost} failed", (
        out,
        err,
    )
    assert first.returncode == (1 if lost else 0), err
    assert out.count("its worker was lost") == lost, out
    assert len(ResultStore(store).leases()) == 0  # the driver held them and released them
    wait_for(lambda: not _jobs(), 60, "the cluster's jobs to end")

    again = _sweep(spec, store, tmp_path)
    out, err = again.communicate(timeout=SWEEP_TIMEOUT_S)
    assert again.returncode == 0, (out, err)
    assert out.strip() == f"{RUNS} of {RUNS} runs done ({RUNS - lost} from the store), 0 failed"
    final = _rows(store)
    assert sorted(final) == sorted(set(final)) and len(final) == RUNS
    assert set(rows) <= set(final)
    wait_for(lambda: not _jobs(), 60, "the cluster's jobs to end")

    # Ctrl-C once the workers run: one line, status 130, the cluster's jobs cancelled
    other = tmp_path / "runs" / "other.sqlite"
    third = _sweep(spec, other, tmp_path, start_new_session=True, preexec_fn=default_sigint)
    try:
        wait_for(lambda: len(_jobs()) == 2 or third.poll() is not None, SWEEP_TIMEOUT_S, "jobs")
        os.killpg(third.pid, signal.SIGINT)
        out, err = third.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if third.poll() is None:
            third.kill()
    assert third.returncode == 130, (out, err)
    assert re.fullmatch(r"interrupted: \d+ of 12 runs done, rerun to resume", err.strip()), err
    wait_for(lambda: not _jobs(), 60, "the cluster's jobs to be cancelled")
    print(f"Slurm sweep: {lost} run(s) lost to the cancelled job, {time.monotonic() - t0:.0f} s")


def test_reports_send_the_notebooks_runs_to_the_scheduler(tmp_path):
    """``fewclip reports --scheduler ADDRESS`` runs the notebooks here and passes the
    address as their ``scheduler`` parameter (``--slurm`` passes its cluster's)."""
    from test_reports import GOOD, QUICK, write_notebook

    from fewclip.cli import cmd_reports as main

    good = write_notebook(tmp_path / "good.ipynb", GOOD[:2])
    (tmp_path / "specs.json").write_text(json.dumps([{"name": "good", "notebook": str(good)}]))
    out = tmp_path / "out"
    argv = ["--spec", str(tmp_path / "specs.json"), "--out", str(out), "--no-progress"]
    argv += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--results", str(tmp_path / "r.sqlite"), "--scheduler", "tcp://127.0.0.1:1"]
    assert main(argv + QUICK) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["good"]["parameters"]["scheduler"] == "tcp://127.0.0.1:1"
