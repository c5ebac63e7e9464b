"""Past one machine: a Slurm cluster of Dask workers for sweeps and reports.

    fewclip sweep sweep.json --slurm --slurm-jobs 4 --slurm-cores 2 --slurm-memory 8GB
    fewclip sweep sweep.json --scheduler tcp://host:8786   # a Dask cluster already running
    fewclip reports --slurm --slurm-jobs 4                 # the reports' runs on Slurm

``--slurm`` starts a ``dask_jobqueue.SLURMCluster`` from this process (a login node, with
``sbatch`` on its PATH): ``--slurm-jobs`` Slurm jobs, each one Dask worker running
``--slurm-cores`` runs at a time (one torch thread each) in ``--slurm-memory``, for at most
``--slurm-walltime``, in partition ``--slurm-queue``; ``--slurm-option KEY=VALUE`` passes
anything else ``SLURMCluster`` accepts (VALUE is JSON where it parses), e.g.
``--slurm-option 'job_extra_directives=["--gres=gpu:1"]'`` or ``--slurm-option
account=lab``. The cluster is shut down when the command ends, also on Ctrl-C (its jobs
are cancelled). The workers need fewclip installed (the same Python path as this process
by default: ``--slurm-option python=/path/to/python`` otherwise) and the data and cache
folders at the same paths; the results store stays with this process (see
:mod:`fewclip.sweep`). The options are in :data:`SLURM_DEFAULTS`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: ``--slurm-*`` defaults: jobs, cores and memory per job, walltime, partition (None: the
#: cluster's default).
SLURM_DEFAULTS: dict[str, Any] = {
    "jobs": 2,
    "cores": 1,
    "memory": "4GB",
    "walltime": "01:00:00",
    "queue": None,
}


def add_cluster_arguments(parser: argparse.ArgumentParser, what: str = "runs") -> None:
    """``--scheduler`` and the ``--slurm`` options, for a command that spreads ``what``."""
    d = SLURM_DEFAULTS
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address to use")
    parser.add_argument(
        "--slurm", action="store_true", help=f"start a Slurm cluster of Dask workers for the {what}"
    )
    parser.add_argument("--slurm-jobs", type=int, default=d["jobs"], help="Slurm jobs (workers)")
    parser.add_argument(
        "--slurm-cores", type=int, default=d["cores"], help=f"cores per job ({what} at a time)"
    )
    parser.add_argument("--slurm-memory", default=d["memory"], help="memory per job, e.g. 8GB")
    parser.add_argument("--slurm-walltime", default=d["walltime"], help="time limit per job")
    parser.add_argument("--slurm-queue", default=d["queue"], help="Slurm partition")
    parser.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another dask_jobqueue.SLURMCluster argument (repeat; VALUE: JSON where it parses)",
    )


@contextmanager
def scheduler_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """The scheduler a command's ``--scheduler`` / ``--slurm`` options ask for (None: none),
    with a started Slurm cluster shut down on leaving, also on Ctrl-C."""
    if args.slurm and args.scheduler:
        raise ValueError("give --slurm or --scheduler, not both")
    if not args.slurm:
        yield args.scheduler
        return
    options = parse_slurm_options(args.slurm_option)
    with slurm_cluster(
        jobs=args.slurm_jobs,
        cores=args.slurm_cores,
        memory=args.slurm_memory,
        walltime=args.slurm_walltime,
        queue=args.slurm_queue,
        **options,
    ) as client:
        yield client


def scheduler_address(scheduler: Any) -> str:
    """The address of a scheduler given as an address or a ``distributed.Client``."""
    return scheduler if isinstance(scheduler, str) else scheduler.scheduler.address


def parse_slurm_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE parsed as JSON where it parses, else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def slurm_options() -> set[str]:
    """Every keyword ``dask_jobqueue.SLURMCluster`` accepts (its own, its job's, its base's)."""
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.core import Job
    from dask_jobqueue.slurm import SLURMJob

    names: set[str] = set()
    for fn in (SLURMCluster.__init__, SLURMJob.__init__, Job.__init__):
        names |= {
            name
            for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    return names


@contextmanager
def slurm_cluster(
    jobs: int = SLURM_DEFAULTS["jobs"],
    cores: int = SLURM_DEFAULTS["cores"],
    memory: str = SLURM_DEFAULTS["memory"],
    walltime: str = SLURM_DEFAULTS["walltime"],
    queue: str | None = SLURM_DEFAULTS["queue"],
    **options: Any,
) -> Iterator[Any]:
    """A ``distributed.Client`` of a started ``SLURMCluster`` of ``jobs`` jobs (see the
    module docstring); the cluster and its jobs end when the block does, also on Ctrl-C."""
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        from dask.distributed import Client
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ValueError(
            "--slurm needs dask-jobqueue and dask.distributed: pip install dask-jobqueue"
        ) from None
    finally:
        # importing dask_jobqueue (its runner module) turns Ctrl-C into sys.exit() anywhere,
        # even in a garbage-collector callback that swallows it: Ctrl-C stays ours
        if threading.current_thread() is threading.main_thread() and ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)
    if shutil.which("sbatch") is None:
        raise ValueError(
            "--slurm needs Slurm's sbatch on the PATH: run fewclip on a node that can submit "
            "Slurm jobs (a login node), or give --scheduler the address of a running cluster"
        )
    if jobs < 1 or cores < 1:
        raise ValueError(f"--slurm-jobs and --slurm-cores must be at least 1, got {jobs}, {cores}")
    unknown = sorted(set(options) - slurm_options())
    if unknown:
        raise ValueError(
            f"--slurm-option {', '.join(unknown)}: not an argument of dask_jobqueue.SLURMCluster "
            "(see its documentation for the ones it accepts)"
        )
    kwargs: dict[str, Any] = {
        "cores": cores,
        "processes": 1,
        "memory": memory,
        "walltime": walltime,
        "queue": queue,
        **options,
    }
    cluster = SLURMCluster(**kwargs)
    try:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()
