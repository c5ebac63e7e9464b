"""Run many configurations: in this process, on a local process pool, or on a Dask cluster.

    from fewclip.sweep import grid, run_sweep
    configs = grid(RunConfig(dataset="fashion_mnist"), method=["tip_adapter", "dual_adapter"],
                   shots=[1, 2, 4, 8, 16])
    frame = run_sweep(configs, "runs/results.sqlite")                    # here, one by one
    frame = run_sweep(configs, "runs/results.sqlite", workers=2)         # local process pool
    frame = run_sweep(configs, "runs/results.sqlite", scheduler="tcp://host:8786")  # Dask

In this process (``workers=1``, no scheduler) each run goes through
:func:`fewclip.runner.run` with the store. Otherwise, one writer: this process (the
driver) alone reads and writes the results store. For each run it looks the run up (a
run already in the store is not repeated, so a rebuild after an interruption does only
what is missing), claims it (a lease in the store, see
:class:`fewclip.results.Leases`), and sends it to a worker, which computes the record with
:func:`fewclip.runner.run` and no store and returns it; the driver writes the row and
releases the lease. Workers write only the feature cache. So the store can sit on the
driver's local disk (SQLite's locks are unreliable over network filesystems) and a lost
worker leaves no lease behind: its run is reported failed and a rerun computes it. A run
that is interrupted leaves no row. A run that fails is reported in the returned frame
(``status="failed"``, ``error``) and the others go on. A Dask cluster can be a
``LocalCluster`` or any ``dask-jobqueue`` cluster (Slurm, PBS, ...): pass its scheduler
address, or the ``Client`` itself; :mod:`fewclip.cluster` starts a Slurm one.

Ctrl-C (also with ``workers > 1``) cancels the queued runs and stops the running ones
within seconds (see :mod:`fewclip.parallel`); the finished runs stay in the store, one
line ``interrupted: N of M runs done, rerun to resume`` is printed and
:class:`SweepInterrupted` (a ``KeyboardInterrupt``) is raised; ``python -m fewclip.sweep``
then exits with status 130. Two sweeps may share a store at the same time: a run one of
them is computing is claimed in the store, so the other waits for it and reads its row
instead of computing it again.

From the shell, a JSON file with a list of configurations, or a base and a grid::

    python -m fewclip.sweep sweep.json --workers 2 --results runs/results.sqlite
    fewclip sweep sweep.json --slurm --slurm-jobs 4   # on Slurm (see fewclip.cluster)
    # sweep.json: {"base": {"dataset": "...", "shots": 4}, "grid": {"seed": [1, 2, 3]}}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .cluster import add_cluster_arguments, scheduler_from_args
from .config import RunConfig
from .parallel import Jobs, open_jobs
from .progress import tqdm

#: Columns of the frame returned by :func:`run_sweep`, besides the record's own.
STATUS_COLUMNS = ("status", "error", "skipped")
#: Configuration columns every frame has (also an empty one).
CONFIG_COLUMNS = ("method", "variant", "dataset", "protocol", "shots", "seed")
#: How the error of a run whose worker was lost begins.
LOST = "its worker was lost (rerun to compute it): "


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep: ``done`` of ``total`` runs finished; ``frame`` holds them."""

    def __init__(self, done: int, total: int, frame: pd.DataFrame) -> None:
        super().__init__(f"interrupted: {done} of {total} runs done, rerun to resume")
        self.done, self.total, self.frame = done, total, frame


def grid(base: RunConfig, **axes: Sequence[Any]) -> list[RunConfig]:
    """Every combination of the given field values, applied to ``base``.

    ``grid(cfg, method=["coop", "apex"], seed=[1, 2, 3])`` gives 6 configurations. An axis
    named ``options`` takes a list of option dicts, each merged into ``base.options``.
    """
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        if "options" in changes:
            if not isinstance(changes["options"], dict):
                raise ValueError(
                    f"grid: options must be a dict per configuration, got {changes['options']!r}"
                )
            changes["options"] = {**base.options, **changes["options"]}
        out.append(base.replace(**changes))
    return out


def _compute(config: dict[str, Any]) -> dict[str, Any]:
    """Worker body (picklable): compute one configuration's record, never raise. It opens
    no results store: the driver writes the record (see :func:`run_sweep`)."""
    from .runner import run

    try:
        record = run(RunConfig.from_dict(config), store=None, force=True)
    except Exception as e:  # reported, not raised: the sweep goes on
        return _failure(config, e)
    record["status"] = "done"
    record["error"] = None
    return record


def _run_here(config: dict[str, Any], store_path: str | None, force: bool) -> dict[str, Any]:
    """One configuration in this process, through the store (:func:`fewclip.runner.run`
    claims it and writes its row); never raise."""
    from .results import ResultStore
    from .runner import run

    try:
        store = ResultStore(store_path) if store_path else None
        record = run(RunConfig.from_dict(config), store=store, force=force)
    except Exception as e:  # reported, not raised: the sweep goes on
        return _failure(config, e)
    return {**record, "status": "done", "error": None}


def _failure(config: dict[str, Any], e: BaseException, where: str = "") -> dict[str, Any]:
    return {
        "config": config,
        "status": "failed",
        "error": f"{where}{type(e).__name__}: {e}",
        "traceback": "".join(traceback.format_exception(e)),
    }


def _stored(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "skipped": True, "status": "done", "error": None}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    cfg = record.get("config") or {}
    row = {k: cfg.get(k) for k in CONFIG_COLUMNS}
    row.update({k: v for k, v in record.items() if k != "traceback"})
    return row


def run_sweep(
    configs: Iterable[RunConfig],
    store: str | os.PathLike | None = "runs/results.sqlite",
    *,
    workers: int = 1,
    scheduler: Any = None,
    force: bool = False,
    progress: bool = True,
    raise_on_error: bool = False,
) -> pd.DataFrame:
    """Run every configuration; returns one row per configuration, in the given order.

    ``workers=1`` and no ``scheduler``: in this process. ``workers > 1``: a local process
    pool (spawned processes, ``cpu_count // workers`` torch threads each). ``scheduler``: a
    Dask scheduler address or ``distributed.Client``. Rows carry the record (accuracy,
    chosen hyper-parameters, ...) plus ``status`` ("done" or "failed"), ``error`` and
    ``skipped`` (True when the store already had the run). ``raise_on_error`` raises after
    the sweep if any run failed. Ctrl-C raises :class:`SweepInterrupted` (see the module).
    """
    configs = list(configs)
    payload = [c.replace(progress=False).to_dict() for c in configs]
    store_path = None if store is None else str(Path(store).expanduser().absolute())
    bar = tqdm(total=len(configs), desc="runs", disable=not progress)
    results: list[dict[str, Any] | None] = [None] * len(configs)

    def done(i: int, record: dict[str, Any]) -> None:
        results[i] = record
        bar.update(1)
        bar.set_postfix(failed=sum(1 for r in results if r and r["status"] == "failed"))

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    try:
        if workers <= 1 and scheduler is None:  # here: the run API claims and writes itself
            for i, config in enumerate(payload):
                done(i, _run_here(config, store_path, force))
        else:
            with open_jobs(
                _compute,
                workers=workers,
                scheduler=scheduler,
                initializer=_worker_init,
                initargs=(threads,),
            ) as running:
                _drive(payload, store_path, force, running, done)
    except KeyboardInterrupt:
        bar.close()
        frame = _frame(results)
        finished = int((frame["status"] == "done").sum()) if len(frame) else 0
        stop = SweepInterrupted(finished, len(configs), frame)
        print(stop, file=sys.stderr, flush=True)
        raise stop from None
    bar.close()
    frame = _frame(results)
    failed = frame[frame["status"] == "failed"] if len(frame) else frame
    if raise_on_error and len(failed):
        raise RuntimeError(f"{len(failed)} of {len(frame)} runs failed: {failed['error'].tolist()}")
    return frame


def _drive(
    payload: list[dict[str, Any]],
    store_path: str | None,
    force: bool,
    running: Jobs,
    done: Callable[[int, dict[str, Any]], None],
) -> None:
    """The driver: the only process that reads and writes the store.

    For each run: its key; its stored row if the store has it (unless ``force``); else a
    lease on it (:class:`fewclip.results.Leases`), then it goes to a worker, and when the
    worker's record comes back it is written and the lease released. A run another process
    holds waits until its row appears (read, not computed again) or its lease is free
    (then taken). A run whose worker was lost is reported failed; a rerun computes it.
    """
    if store_path is None:
        for i, config in enumerate(payload):
            running.submit(i, config)
        while len(running):
            for i, record, error in running.finished(timeout=1.0):
                done(i, record if error is None else _failure(payload[i], error, LOST))
        return
    from .results import POLL_SECONDS, Leases, ResultStore
    from .runner import run_key

    store = ResultStore(store_path)
    keys: dict[int, str] = {}
    waiting: list[int] = []

    with Leases(store) as leases:

        def start(i: int) -> bool:
            """Settle or send run ``i``; False while another process holds it."""
            key = keys[i]
            if force:
                running.submit(i, payload[i])
                return True
            row = store.get(key)
            if row is None and leases.take(key):
                row = store.get(key)  # written between the look and the lease
                if row is None:
                    running.submit(i, payload[i])
                    return True
                leases.release(key)
            if row is None:
                return False
            done(i, _stored(row))
            return True

        for i, config in enumerate(payload):
            try:
                keys[i] = run_key(RunConfig.from_dict(config))
            except Exception as e:  # the run could not start: reported, the others go on
                done(i, _failure(config, e))
                continue
            if not start(i):
                waiting.append(i)
        while len(running) or waiting:
            for i, record, error in running.finished(timeout=POLL_SECONDS if waiting else 1.0):
                if error is not None:
                    record = _failure(payload[i], error, LOST)
                elif record["status"] == "done" and not store.add(record, replace=force):
                    row = store.get(record["run_key"])  # another process wrote it first
                    record = record if row is None else _stored(row)
                if not force:
                    leases.release(keys[i])
                done(i, record)
            waiting = [i for i in waiting if not start(i)]


def _frame(results: list[dict[str, Any] | None]) -> pd.DataFrame:
    rows = [_flatten(r) for r in results if r is not None]
    return pd.DataFrame(rows, columns=None if rows else [*CONFIG_COLUMNS, *STATUS_COLUMNS])


def load_spec(path: str | os.PathLike) -> list[RunConfig]:
    """Configurations from a JSON file: a list of RunConfig dicts, or
    ``{"base": {...}, "grid": {"field": [values, ...], ...}}`` (see :func:`grid`)."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the sweep file {path}: {e}") from None
    if isinstance(spec, list):
        return [RunConfig.from_dict(d) for d in spec]
    if isinstance(spec, dict) and set(spec) <= {"base", "grid"}:
        return grid(RunConfig.from_dict(spec.get("base", {})), **spec.get("grid", {}))
    raise ValueError(
        f"{path}: expected a list of configurations or an object with 'base' and 'grid'"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m fewclip.sweep SPEC.json``: 0 when every run is done, 1 when some failed,
    2 for a bad sweep file or cluster option, 130 when interrupted."""
    p = argparse.ArgumentParser(prog="python -m fewclip.sweep", description=load_spec.__doc__)
    p.add_argument("spec", help="JSON file of configurations")
    p.add_argument("--results", default="runs/results.sqlite", help="results store")
    p.add_argument("--workers", type=int, default=1, help="local process pool size")
    p.add_argument("--force", action="store_true", help="rerun runs the store already has")
    p.add_argument("--no-progress", action="store_true")
    add_cluster_arguments(p)
    args = p.parse_args(argv)
    try:
        configs = load_spec(args.spec)
        with scheduler_from_args(args) as scheduler:
            frame = run_sweep(
                configs,
                args.results or None,
                workers=args.workers,
                scheduler=scheduler,
                force=args.force,
                progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = frame[frame["status"] == "failed"] if len(frame) else frame
    stored = int(frame["skipped"].eq(True).sum()) if "skipped" in frame else 0
    print(
        f"{len(frame) - len(failed)} of {len(frame)} runs done ({stored} from the store), "
        f"{len(failed)} failed"
    )
    for _, row in failed.iterrows():
        print(f"failed: {row['method']} {row['dataset']} shots={row['shots']}: {row['error']}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    from fewclip.sweep import main as _main  # the importable module, so workers can unpickle

    sys.exit(_main())
