"""Time a benchmark on two commits side by side: separate processes, alternating A/B.

    python benchmarks/compare_commits.py --base 8d12182 --reps 4 scale \
        --classes 1000 --shots 16 --rounds 4 --betas 4 --big-val 0 --peers
    python benchmarks/compare_commits.py --base 8d12182 --reps 4 feature_cache \
        --threads 1 --repeats 7 --methods tip_adapter_f dual_adapter

Each repetition runs the benchmark once on the base commit and once on this checkout, in
alternating order (A B, B A, ...), each with its own library (``PYTHONPATH``) and its own
copy of the benchmark script, torch on ``--threads`` threads. On a shared machine whose
speed drifts within minutes, the pair ratios (this checkout / base, per repetition) are
the figures to read; medians of each side are printed beside them. The base commit is
checked out once as a detached worktree under ``--worktrees`` (kept for the next run).

``--record`` appends "base -> this" medians with the pairs' ratios to
``benchmarks/results/before_after.csv`` (published in ``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: benchmark -> (script, parser of its stdout into {figure: seconds})
SCRIPTS = {
    "scale": "benchmarks/bench_scale.py",
    "feature_cache": "benchmarks/bench_feature_cache.py",
}


def parse_scale(out: str) -> dict[str, float]:
    """DualAdapter's rows (epoch, search) and the peers' fit times of bench_scale."""
    figures = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 11 and all(re.fullmatch(r"[\d.]+|nan", c) for c in cells):
            c, k = int(cells[0]), int(cells[1])
            figures[f"DualAdapter C = {c:,}, K = {k}: epoch"] = float(cells[3])
            if cells[9] != "nan":
                figures[f"DualAdapter C = {c:,}, K = {k}: search (extrapolated)"] = float(cells[9])
        match = re.match(r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+x\s+(.*)$", line)
        if match:
            figures[f"{match[1]} ({match[4]}): fit"] = float(match[2])
    return figures


def parse_feature_cache(out: str) -> dict[str, float]:
    """Each method's cached fit of bench_feature_cache."""
    figures = {}
    for line in out.splitlines():
        match = re.match(r"^(\w+)\s+(\w+)\s+([\d.]+)\s+[\d.]+\s+", line)
        if match and match[1] != "method":
            figures[f"{match[1]} ({match[2]} epochs): cached fit"] = float(match[3])
    return figures


PARSERS = {"scale": parse_scale, "feature_cache": parse_feature_cache}


def base_checkout(commit: str, worktrees: Path) -> Path:
    """A detached worktree of ``commit`` (created once)."""
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = worktrees / f"fewclip-{full}"
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), full],
            check=True,
            capture_output=True,
        )
    return path


def run_once(tree: Path, script: str, args: list[str], threads: int) -> str:
    data = os.environ.get("FEWCLIP_DATA", str(ROOT / "data"))
    env = dict(
        os.environ,
        PYTHONPATH=str(tree / "lib"),
        FEWCLIP_DATA=data,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    out = subprocess.run(
        [sys.executable, script, *args], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{tree}: {script} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def compare(args: argparse.Namespace, extra: list[str]) -> list[dict]:
    trees = {"base": base_checkout(args.base, Path(args.worktrees)), "this": ROOT}
    parse, script = PARSERS[args.benchmark], SCRIPTS[args.benchmark]
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for rep in range(args.reps):
        for side in ("base", "this") if rep % 2 == 0 else ("this", "base"):
            out = run_once(trees[side], script, extra, args.threads)
            figures = parse(out)
            model = re.search(r"backbone (.+?) on ", out)
            args.model = model[1] if model else "synthetic features, d = 1,024"
            runs[side].append(figures)
            print(f"rep {rep} {side}: " + ", ".join(f"{k} {v:g}" for k, v in figures.items()))
    rows = []
    for name in runs["this"][0]:
        base = [r[name] for r in runs["base"] if name in r]
        this = [r[name] for r in runs["this"] if name in r]
        if not base:
            continue
        ratios = sorted(t / b for t, b in zip(this, base, strict=False))
        row = {
            "figure": name,
            "base": statistics.median(base),
            "this": statistics.median(this),
            "ratio": statistics.median(ratios),
            "low": ratios[0],
            "high": ratios[-1],
        }
        rows.append(row)
    print(f"\n{'figure':<60}{'base':>9}{'this':>9}{'ratio':>8}  pair ratios")
    for r in rows:
        print(
            f"{r['figure']:<60}{r['base']:>9.2f}{r['this']:>9.2f}{r['ratio']:>7.2f}x"
            f"  {r['low']:.2f}-{r['high']:.2f}"
        )
    print(f"medians of {args.reps} alternating runs per side; ratio: this / base, per pair")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worktrees", default=tempfile.gettempdir())
    parser.add_argument("--record", action="store_true", help="append to the results CSV")
    parser.add_argument("benchmark", choices=sorted(SCRIPTS))
    args, extra = parser.parse_known_args(argv)
    rows = compare(args, extra)
    if args.record:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from results_csv import append_rows

        note = (
            f"{args.base} -> this commit, medians of {args.reps} alternating runs each, "
            f"pair ratios' range; python benchmarks/compare_commits.py "
            + " ".join(argv or sys.argv[1:])
        )
        out = [
            {
                "setting": f"{r['figure']}",
                "metric": f"{args.base} -> this",
                "value": f"{r['base']:.2f} s -> {r['this']:.2f} s "
                f"({r['ratio']:.2f}x, pairs {r['low']:.2f}-{r['high']:.2f})",
            }
            for r in rows
        ]
        print("appended to", append_rows("before_after", out, model=args.model, note=note))
    return rows


if __name__ == "__main__":
    main()
