"""The results store: one row per finished run, in one SQLite file.

A row is written in a single transaction when a run has finished, so an interrupted run
leaves no partial row. Rows are keyed by the run key (a hash of everything that
determines the result: configuration, backbone weights, dataset content; see
:meth:`fewclip.config.RunConfig.run_key`), so a finished configuration is found and skipped
unless forced. Several processes on one machine (two sweeps started at once, notebooks)
may share the file; SQLite serialises the writes. A sweep's workers never open it: the
sweep's driver writes for them (:mod:`fewclip.sweep`), so the file can stay on a local
disk, never on a network filesystem, whose locks SQLite cannot rely on. And:

- a finished run written twice is not an error: the first row is kept and
  :meth:`ResultStore.add` says the run was already there (the caller reads that row);
- a run being computed is *claimed* (:meth:`ResultStore.claim`): a lease row with an
  expiry, renewed while the run goes on. Another process asking for the same run waits,
  then reads the finished row; if the holder failed, it takes over. A lease whose holder
  died (SIGKILL, a lost node) is taken over when it expires, at once when the holder was a
  process on this host that no longer exists. A sweep's driver holds the leases of the runs
  its workers compute (:class:`Leases`).

Flat columns hold what tables and figures filter on; JSON columns hold the rest (config,
per-class accuracy, chosen hyper-parameters, timings, versions, notes).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FLAT_COLUMNS = {
    "run_key": "TEXT PRIMARY KEY",
    "created_at": "TEXT",
    "method": "TEXT",
    "variant": "TEXT",
    "dataset": "TEXT",
    "protocol": "TEXT",
    "backbone": "TEXT",
    "pretrained": "TEXT",
    "model_label": "TEXT",
    "shots": "INTEGER",
    "seed": "INTEGER",
    "selection": "TEXT",
    "accuracy": "REAL",
    "base_accuracy": "REAL",
    "new_accuracy": "REAL",
    "hm": "REAL",
    "trainable_params": "INTEGER",
    "fit_seconds": "REAL",
    "predict_seconds": "REAL",
    "unreadable_images": "INTEGER",
}
JSON_COLUMNS = (
    "config",
    "options",
    "chosen",
    "metrics",
    "timings",
    "versions",
    "notes",
    "history",
    "backbone_info",
)

#: Seconds a claim lasts unless renewed; the holder renews it every quarter of that.
LEASE_SECONDS = 120.0
#: Seconds between two looks at a run another process is computing.
POLL_SECONDS = 0.5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Claim:
    """What :meth:`ResultStore.claim` yields: ``record`` is the finished run's row when
    another process wrote it (then compute nothing), else None (this process holds the
    lease and computes). ``waited``: seconds spent waiting for another holder."""

    record: dict[str, Any] | None = None
    waited: float = 0.0
    owner: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)


class Leases:
    """The runs one process (a sweep's driver) holds while its workers compute them.

    ``with Leases(store) as held:`` ``held.take(key)`` claims a run (False while another
    live holder has it; see :meth:`ResultStore.claim` for when a lease is taken over),
    ``held.release(key)`` gives it back; one background thread renews every held lease and
    leaving the block releases the rest, also on an exception, so an interrupted driver's
    runs can be taken over at once.
    """

    def __init__(self, store: ResultStore, lease: float = LEASE_SECONDS) -> None:
        self.store, self.lease = store, lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renew = threading.Thread(target=self._renew_all, daemon=True, name="fewclip-leases")

    def __enter__(self) -> Leases:
        self._renew.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._renew.join()
        with self._lock:
            keys, self.held = list(self.held), set()
        with self.store._connect() as db:
            db.executemany(
                "DELETE FROM leases WHERE run_key = ? AND owner = ?",
                [(k, self.owner) for k in keys],
            )

    def take(self, run_key: str) -> bool:
        with self._lock:
            if run_key in self.held:
                return True
            if not self.store._try_lease(run_key, self.owner, self.lease):
                return False
            self.held.add(run_key)
            return True

    def release(self, run_key: str) -> None:
        with self._lock:
            self.held.discard(run_key)
            with self.store._connect() as db:
                db.execute(
                    "DELETE FROM leases WHERE run_key = ? AND owner = ?", (run_key, self.owner)
                )

    def _renew_all(self) -> None:
        while not self._stop.wait(self.lease / 4):
            with self._lock:
                rows = [(time.time() + self.lease, k, self.owner) for k in self.held]
                try:
                    with self.store._connect() as db:
                        db.executemany(
                            "UPDATE leases SET expires = ? WHERE run_key = ? AND owner = ?", rows
                        )
                except sqlite3.Error:  # a busy store: try again next time
                    pass


class ResultStore:
    """``ResultStore(path)``; ``path=None`` keeps results in memory only."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._memory = sqlite3.connect(":memory:") if self.path is None else None
        with self._connect() as db:
            columns = [f"{k} {v}" for k, v in FLAT_COLUMNS.items()]
            columns += [f"{k} TEXT" for k in JSON_COLUMNS]
            db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(columns)})")
            db.execute(
                "CREATE TABLE IF NOT EXISTS leases (run_key TEXT PRIMARY KEY, owner TEXT, "
                "host TEXT, pid INTEGER, expires REAL)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._memory is not None:
            with self._memory:
                yield self._memory
            return
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def has(self, run_key: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)).fetchone()
        return row is not None

    def get(self, run_key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE run_key = ?", (run_key,)).fetchone()
            db.row_factory = None
        return None if row is None else _decode(dict(row))

    def add(self, record: dict[str, Any], replace: bool = False) -> bool:
        """Insert one finished run's record; False (and nothing written) when a row with the
        same key is already there, unless ``replace`` (then it is overwritten)."""
        row = {k: record.get(k) for k in FLAT_COLUMNS}
        row["created_at"] = row["created_at"] or time.strftime("%Y-%m-%dT%H:%M:%S")
        for k in JSON_COLUMNS:
            row[k] = json.dumps(record.get(k), default=str)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._connect() as db:
            cursor = db.execute(f"{verb} INTO runs ({names}) VALUES ({marks})", tuple(row.values()))
            return cursor.rowcount == 1

    @contextmanager
    def claim(
        self, run_key: str, *, lease: float = LEASE_SECONDS, poll: float = POLL_SECONDS
    ) -> Iterator[Claim]:
        """Hold the run ``run_key`` while computing it: ``with store.claim(key) as c:``.

        Waits while another live process holds it. Yields a :class:`Claim` whose ``record``
        is the finished row if one appeared (compute nothing), else None (compute, then
        :meth:`add`). The lease is renewed in the background and released on exit, also on
        an exception, so a failed run can be taken over at once.
        """
        claim = Claim(owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        if self._memory is not None:  # one process: nothing to share
            claim.record = self.get(run_key)
            yield claim
            return
        t0 = time.monotonic()
        while True:
            claim.record = self.get(run_key)
            if claim.record is not None or self._try_lease(run_key, claim.owner, lease):
                break
            time.sleep(poll)
        claim.waited = time.monotonic() - t0
        if claim.record is not None:
            yield claim
            return
        # the row may have been written between get() and taking the lease
        claim.record = self.get(run_key)
        renew = threading.Thread(
            target=self._renew, args=(run_key, claim, lease), daemon=True, name="fewclip-lease"
        )
        renew.start()
        try:
            yield claim
        finally:
            claim._stop.set()
            renew.join()
            with self._connect() as db:
                db.execute(
                    "DELETE FROM leases WHERE run_key = ? AND owner = ?", (run_key, claim.owner)
                )

    def _try_lease(self, run_key: str, owner: str, lease: float) -> bool:
        host, now = socket.gethostname(), time.time()
        with self._connect() as db:
            held = db.execute(
                "SELECT owner, host, pid, expires FROM leases WHERE run_key = ?", (run_key,)
            ).fetchone()
            if held is not None:
                other, other_host, pid, expires = held
                dead = other_host == host and pid != os.getpid() and not _pid_alive(pid)
                if expires < now or dead:
                    db.execute(
                        "DELETE FROM leases WHERE run_key = ? AND owner = ?", (run_key, other)
                    )
            cursor = db.execute(
                "INSERT OR IGNORE INTO leases VALUES (?, ?, ?, ?, ?)",
                (run_key, owner, host, os.getpid(), now + lease),
            )
            return cursor.rowcount == 1

    def _renew(self, run_key: str, claim: Claim, lease: float) -> None:
        while not claim._stop.wait(lease / 4):
            try:
                with self._connect() as db:
                    db.execute(
                        "UPDATE leases SET expires = ? WHERE run_key = ? AND owner = ?",
                        (time.time() + lease, run_key, claim.owner),
                    )
            except sqlite3.Error:  # a busy store: try again next time
                pass

    def leases(self) -> pd.DataFrame:
        """The runs being computed now (one row per lease: run_key, owner, host, pid, expires)."""
        with self._connect() as db:
            return pd.read_sql_query("SELECT * FROM leases", db)

    def delete(self, run_key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE run_key = ?", (run_key,))

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def to_frame(self, expand: bool = True) -> pd.DataFrame:
        """All rows as a DataFrame; JSON columns decoded, options/chosen flattened if ``expand``."""
        with self._connect() as db:
            frame = pd.read_sql_query("SELECT * FROM runs ORDER BY created_at", db)
        for k in JSON_COLUMNS:
            frame[k] = frame[k].map(lambda s: json.loads(s) if isinstance(s, str) else s)
        if expand and len(frame):
            for k in ("options", "chosen"):
                flat = pd.json_normalize(frame[k].map(lambda d: d or {}).tolist())
                flat.columns = [f"{k}.{c}" for c in flat.columns]
                frame = pd.concat([frame, flat.set_index(frame.index)], axis=1)
        return frame


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for k in JSON_COLUMNS:
        if isinstance(row.get(k), str):
            row[k] = json.loads(row[k])
    return row
