"""Append a benchmark's figures to ``benchmarks/results/<benchmark>.csv``.

    from results_csv import append_rows
    append_rows("feature_cache", model="tiny-emoji-rn version 5",
                rows=[{"setting": "DualAdapter", "metric": "ratio", "value": "54.2x"}])

Each row gets the date (UTC), the commit of the code measured and the machine, so that
``benchmarks/write_performance.py`` can publish the current figures in
``docs/performance.md`` with where and when they were measured.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("date", "commit", "machine", "model", "setting", "metric", "value", "note")


def commit() -> str:
    """The short hash of HEAD, with ``+uncommitted`` when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "lib", "benchmarks"],
            capture_output=True,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def machine() -> str:
    """CPU model, its widest vector extension, the core count and the GPU when torch sees one."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    parts = [name, vector, f"{os.cpu_count()} vCPU"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(p for p in parts if p)


def append_rows(
    benchmark: str,
    rows: Iterable[Mapping[str, object]],
    *,
    model: str,
    note: str = "",
    results: Path = RESULTS,
) -> Path:
    """Append ``rows`` (each with ``setting``, ``metric``, ``value``, optionally ``note``)
    to ``results/<benchmark>.csv``, writing the header when the file is new."""
    path = Path(results) / f"{benchmark}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    stamp = {
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "commit": commit(),
        "machine": machine(),
        "model": model,
    }
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            unknown = set(row) - {"setting", "metric", "value", "note"}
            if unknown:
                raise ValueError(
                    f"unknown column(s) {sorted(unknown)}; use setting, metric, value, note"
                )
            writer.writerow({**stamp, "note": note, **{k: str(v) for k, v in row.items()}})
    return path
