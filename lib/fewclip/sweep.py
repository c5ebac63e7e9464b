"""Run many configurations: in this process, on a local process pool, or on a Dask cluster.

    from fewclip.sweep import grid, run_sweep
    configs = grid(RunConfig(dataset="fashion_mnist"), method=["tip_adapter", "dual_adapter"],
                   shots=[1, 2, 4, 8, 16])
    frame = run_sweep(configs, "runs/results.sqlite")                    # here, one by one
    frame = run_sweep(configs, "runs/results.sqlite", workers=2)         # local process pool
    frame = run_sweep(configs, "runs/results.sqlite", scheduler="tcp://host:8786")  # Dask

Every run goes through :func:`fewclip.runner.run` with the shared results store, so a run
already in the store is not repeated (a rebuild after an interruption does only what is
missing) and a run that is interrupted leaves no row. A run that fails is reported in the
returned frame (``status="failed"``, ``error``) and the others go on. A Dask cluster can be
a ``LocalCluster`` or any ``dask-jobqueue`` cluster (Slurm, PBS, ...): pass its scheduler
address, or the ``Client`` itself.

Ctrl-C (also with ``workers > 1``) cancels the queued runs and stops the running ones
within seconds (see :mod:`fewclip.parallel`); the finished runs stay in the store, one
line ``interrupted: N of M runs done, rerun to resume`` is printed and
:class:`SweepInterrupted` (a ``KeyboardInterrupt``) is raised; ``python -m fewclip.sweep``
then exits with status 130. Two sweeps may share a store at the same time: a run one of
them is computing is claimed in the store (see :meth:`fewclip.results.ResultStore.claim`),
so the other waits for it and reads its row instead of computing it again.

From the shell, a JSON file with a list of configurations, or a base and a grid::

    python -m fewclip.sweep sweep.json --workers 2 --results runs/results.sqlite
    # sweep.json: {"base": {"dataset": "...", "shots": 4}, "grid": {"seed": [1, 2, 3]}}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig
from .parallel import map_jobs

#: Columns of the frame returned by :func:`run_sweep`, besides the record's own.
STATUS_COLUMNS = ("status", "error", "skipped")
#: Configuration columns every frame has (also an empty one).
CONFIG_COLUMNS = ("method", "variant", "dataset", "protocol", "shots", "seed")


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


def _run_one(config: dict[str, Any], store_path: str | None, force: bool) -> dict[str, Any]:
    """Worker body (picklable): run one configuration, never raise."""
    from .results import ResultStore
    from .runner import run

    cfg = RunConfig.from_dict(config)
    try:
        record = run(cfg, store=ResultStore(store_path) if store_path else None, force=force)
    except Exception as e:  # reported, not raised: the sweep goes on
        return {
            "config": config,
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
    record["status"] = "done"
    record["error"] = None
    return record


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
    if store_path is not None:
        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        from .results import ResultStore

        ResultStore(store_path)  # create the table once, before workers race to
    bar = tqdm(total=len(configs), desc="runs", disable=not progress)
    results: list[dict[str, Any] | None] = [None] * len(configs)

    def done(i: int, record: dict[str, Any]) -> None:
        results[i] = record
        bar.update(1)
        bar.set_postfix(failed=sum(1 for r in results if r and r["status"] == "failed"))

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    jobs = [(p, store_path, force) for p in payload]
    try:
        map_jobs(
            _run_one,
            jobs,
            done,
            workers=workers,
            scheduler=scheduler,
            initializer=_worker_init,
            initargs=(threads,),
        )
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
    2 for a bad sweep file, 130 when interrupted."""
    p = argparse.ArgumentParser(prog="python -m fewclip.sweep", description=load_spec.__doc__)
    p.add_argument("spec", help="JSON file of configurations")
    p.add_argument("--results", default="runs/results.sqlite", help="results store")
    p.add_argument("--workers", type=int, default=1, help="local process pool size")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address")
    p.add_argument("--force", action="store_true", help="rerun runs the store already has")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        configs = load_spec(args.spec)
        frame = run_sweep(
            configs,
            args.results or None,
            workers=args.workers,
            scheduler=args.scheduler,
            force=args.force,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = frame[frame["status"] == "failed"] if len(frame) else frame
    print(f"{len(frame) - len(failed)} of {len(frame)} runs done, {len(failed)} failed")
    for _, row in failed.iterrows():
        print(f"failed: {row['method']} {row['dataset']} shots={row['shots']}: {row['error']}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    from fewclip.sweep import main as _main  # the importable module, so workers can unpickle

    sys.exit(_main())
