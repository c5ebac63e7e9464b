"""The project speaks only of itself, and its docstrings hold no timings.

1. No tracked text file (code, docs, notebooks, reports, data notes) uses the vocabulary of
   how the work was organised (work periods, tracker items, who did what, the machines of a
   work period): a reader of fewclip needs none of it. An upstream tracker reference keeps
   its form (a URL, ``nbclient issue #312``, ``Tip-Adapter#11``).
2. No docstring or comment in ``lib/fewclip`` quotes a timing ("3.9 ms", "564 s"): timings
   change with the machine and the code and belong in ``docs/performance.md`` (from
   ``benchmarks/results/``) or ``docs/design/``. A docstring keeps the contract (what
   equals what) and the name of the test that holds it.

Each failure is reported as ``file:line: text``.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEXT_SUFFIXES = {
    ".py", ".md", ".ipynb", ".json", ".jsonl", ".yml", ".yaml", ".toml", ".cfg", ".txt",
    ".csv", ".cff", ".html", ".j2", ".sh", ".ini",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "LICENSE", ".gitignore", "run"}
UNTRACKED_DIRS = {".git", ".venv", "data", "runs", "cache", "site", "build", "dist"}

# The words are split so that this file does not contain them whole.
PROCESS_WORDS = re.compile(
    r"\bsess(?:ion)s?\b"  # a work period (pytest's scope="..." is allowed below)
    r"|\biss(?:ue)s?\b"  # a tracker item (an upstream numbered one is allowed below)
    r"|\btick(?:et)s?\b"
    r"|\bcoordin(?:ator)s?\b"
    r"|\bag(?:ent)s?\b"
    r"|\bfarm-(?:bench|studio)\b",
    re.IGNORECASE,
)
ALLOWED = [
    re.compile(r"https?://\S+"),  # URLs, upstream trackers included
    re.compile(r"scope=[\"']sess(?:ion)[\"']"),  # pytest fixture scope
    re.compile(r"\biss(?:ue)s? #\d+", re.IGNORECASE),  # an upstream numbered item
    re.compile(r"user-ag(?:ent)", re.IGNORECASE),
]

# A number with a unit of time. A bare "s" counts unless a product follows ("0.15 s (1 - x)"
# is 0.15 times the logit scale s).
TIMING = re.compile(
    r"(?<![\w.])\d+(?:[.,]\d+)?(?:\s*-\s*\d+(?:\.\d+)?)?\s?"
    r"(?:ms|us|µs|ns|secs?|seconds?|mins?|minutes?|hours?|h\b|s\b(?!\s*[(*@]))"
)


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        paths = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        paths = [
            p for p in ROOT.rglob("*") if not UNTRACKED_DIRS & set(p.relative_to(ROOT).parts[:1])
        ]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)]


def process_words(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line using the work's own vocabulary."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        cleaned = line
        for allowed in ALLOWED:
            cleaned = allowed.sub(" ", cleaned)
        if PROCESS_WORDS.search(cleaned):
            found.append((number, line.strip()[:160]))
    return found


def timings_in_docs(source: str) -> list[tuple[int, str]]:
    """(line number, line) of each docstring or comment line that quotes a timing."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is None:
                continue
            first = node.body[0].lineno
            for offset, line in enumerate(doc.splitlines()):
                if TIMING.search(line):
                    found.append((first + offset, line.strip()[:160]))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and TIMING.search(token.string):
            found.append((token.start[0], token.string.strip()[:160]))
    return sorted(found)


def test_the_vocabulary_check_catches_and_allows_what_it_should():
    bad = [
        "until this sess" + "ion: a copy",
        "the scale iss" + "ue targets 50x",
        "earlier sess" + "ions' machines",
        "filed by the coordin" + "ator",
    ]
    good = [
        '@pytest.fixture(scope="sess' + 'ion")',
        "see https://github.com/gaopengcuhk/Tip-Adapter/iss" + "ues/11",
        "papermill can hang (nbclient iss" + "ue #312)",
        "Tip-Adapter#11 reports the test-set selection",
        "the assessment of each configuration",
    ]
    assert [len(process_words(t)) for t in bad] == [1] * len(bad)
    assert [len(process_words(t)) for t in good] == [0] * len(good)


def test_the_timing_check_catches_and_allows_what_it_should():
    source = '''
def f():
    """Fast.

    one thread: 3.9 ms against 21.7 ms; 564 s on 2 cores; 8 us
    the (N, C) term is 0.15 s (1 - f @ W); 16 shots; 2 h 5 min
    """
    x = 1  # 7 us against 39 us
    y = 2  # 5 epochs, 0.2 alpha
'''
    lines = [n for n, _ in timings_in_docs(source)]
    assert lines == [5, 6, 8]


def test_no_file_speaks_of_how_the_work_was_organised():
    failures = []
    for path in tracked_text_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        failures += [f"{rel}:{n}: {line}" for n, line in process_words(text)]
    assert not failures, "words about the work, not the project:\n" + "\n".join(failures)


def test_no_docstring_or_comment_in_the_library_quotes_a_timing():
    failures = []
    for path in sorted((ROOT / "lib" / "fewclip").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        failures += [f"{rel}:{n}: {line}" for n, line in timings_in_docs(path.read_text())]
    assert not failures, (
        "timings belong in docs/performance.md or docs/design/, not in docstrings:\n"
        + "\n".join(failures)
    )
