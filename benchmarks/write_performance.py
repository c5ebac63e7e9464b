"""Write ``docs/performance.md`` from the CSV files under ``benchmarks/results/``.

    python benchmarks/write_performance.py            # rewrite the page
    python benchmarks/write_performance.py --check    # exit 1 when the page is out of date

Only the current figures are published: for each benchmark, setting and metric, the row
with the latest date (the later row of the file on the same date). Each table names the
machine, the commit and the date its figures come from.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"

#: Title and one line of context per benchmark file; files not named here come last.
SECTIONS = {
    "feature_cache": (
        "Cached features versus re-encoding images",
        "The feature-level methods trained on cached image features against re-encoding "
        "augmented images through the image encoder every epoch, as the official codes do "
        "(same method code, model, data, epochs, crop scale and seed; "
        "`benchmarks/bench_feature_cache.py`).",
    ),
    "scale": (
        "DualAdapter at ImageNet scale",
        "Synthetic features, one thread (`benchmarks/bench_scale.py`). The floor is every "
        "matrix product an epoch computes, each timed alone; the affinities' two products "
        "are a lower bound no implementation can go below. The feature peers' rows time "
        "one fit (trained ones: one epoch of their default) beside one (M, d) x (d, C) "
        "product.",
    ),
    "before_after": (
        "DualAdapter before and after its restructuring",
        "The same benchmark on commit 8d12182 (before DualAdapter was rewritten as plain "
        "formulas plus kernels) and on a later commit, in separate processes alternating A "
        "B / B A, one thread, on a machine shared with other jobs: the pair ratios (after / "
        "before, per pair) are the figures to read (`benchmarks/compare_commits.py`; "
        "decisions in [design/dual_adapter_kernels.md](design/dual_adapter_kernels.md)).",
    ),
    "search": (
        "The cache methods' hyper-parameter search",
        "DualAdapter's (beta, alpha, lam) grid (`benchmarks/bench_search.py`); every "
        "variant chooses the same setting.",
    ),
    "prompt_cache": (
        "Prompt learners on cached image features",
        "CoOp on cached image features against re-encoding images each step, and the "
        "per-step cost of image-conditioned prompts (`benchmarks/bench_prompt_cache.py`).",
    ),
    "pretrain": (
        "Pretraining step",
        "One training step of the tiny models' pretraining (batch 256), the model and images "
        "contiguous (the floor) against channels-last (`--channels-last`, the same "
        "computation up to float rounding), alternating in one process "
        "(`benchmarks/bench_pretrain_layout.py`).",
    ),
    "setup": ("Set-up and start-up", "Wall times of the commands a new user runs."),
}
STAMP = ("model", "machine", "commit", "date")


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def current(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The latest row of each (setting, metric), in the order settings first appear."""
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        key = (row["setting"], row["metric"])
        if key not in latest or row["date"] >= latest[key]["date"]:
            latest[key] = row
    return list(latest.values())


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, str]]) -> list[str]:
    """One line per setting (and stamp), one column per metric, then the stamp columns."""
    metrics: list[str] = []
    lines: dict[tuple[str, ...], dict[str, str]] = {}
    notes: dict[tuple[str, ...], str] = {}
    for row in rows:
        if row["metric"] not in metrics:
            metrics.append(row["metric"])
        key = (row["setting"], *(row[k] for k in STAMP))
        lines.setdefault(key, {})[row["metric"]] = row["value"]
        if row.get("note"):
            notes[key] = row["note"]
    head = ["setting", *metrics, *STAMP]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, values in lines.items():
        cells = [key[0], *(values.get(m, "") for m in metrics), *key[1:]]
        out.append("| " + " | ".join(cell(c) for c in cells) + " |")
    noted = [(key[0], note) for key, note in notes.items()]
    if noted:
        out.append("")
        out += [f"- {cell(setting)}: {cell(note)}" for setting, note in noted]
    return out


def render(results: Path = RESULTS) -> str:
    files = {p.stem: p for p in sorted(results.glob("*.csv"))}
    order = [n for n in SECTIONS if n in files] + [n for n in files if n not in SECTIONS]
    out = [
        "# Performance",
        "",
        "<!-- written by benchmarks/write_performance.py from benchmarks/results/*.csv: "
        "edit the CSV files, not this page -->",
        "",
        "The current figures of the benchmarks in `benchmarks/`, each with the model, machine, "
        "commit and date it was measured on. Ratios are measured side by side in one run; "
        "absolute times depend on the machine (the shared machines these were measured on "
        "drift by up to 1.6x within minutes), so compare figures of one machine only. How "
        "the figures got here, and what was tried and dropped, is in "
        "[design/speed.md](design/speed.md). A benchmark run with `--record` (where it has "
        "the flag) appends its rows through `benchmarks/results_csv.py`.",
    ]
    for name in order:
        title, intro = SECTIONS.get(name, (name.replace("_", " ").capitalize(), ""))
        out += ["", f"## {title}", ""]
        if intro:
            out += [intro, ""]
        out += table(current(read(files[name])))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            script = Path(__file__).relative_to(ROOT)
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python {script}")
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
