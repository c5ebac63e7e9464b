"""The results store: one row per finished run, in one SQLite file.

A row is written in a single transaction when a run has finished, so an interrupted run
leaves no partial row. Rows are keyed by the run key (a hash of everything that
determines the result: configuration, backbone weights, dataset content; see
:meth:`fewclip.config.RunConfig.run_key`), so a finished configuration is found and skipped
unless forced. Several processes (a process pool, Dask workers) may write to the same
file; SQLite serialises the writes.

Flat columns hold what tables and figures filter on; JSON columns hold the rest (config,
per-class accuracy, chosen hyper-parameters, timings, versions, notes).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

    def add(self, record: dict[str, Any], replace: bool = False) -> None:
        """Insert one finished run's record (``replace`` overwrites a row with the same key)."""
        row = {k: record.get(k) for k in FLAT_COLUMNS}
        row["created_at"] = row["created_at"] or time.strftime("%Y-%m-%dT%H:%M:%S")
        for k in JSON_COLUMNS:
            row[k] = json.dumps(record.get(k), default=str)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        with self._connect() as db:
            db.execute(f"{verb} INTO runs ({names}) VALUES ({marks})", tuple(row.values()))

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
