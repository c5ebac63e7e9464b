"""Progress output off a terminal is whole lines: no carriage returns, no escape codes."""

from __future__ import annotations

import io
import subprocess
import sys

from fewclip.progress import PlainProgress, tqdm
from fewclip.prompting.toy import coloured_squares


def test_off_a_terminal_progress_is_plain_lines():
    buf = io.StringIO()
    bar = tqdm(total=3, desc="runs", file=buf, mininterval=0)
    assert isinstance(bar, PlainProgress)
    for _ in range(3):
        bar.update(1)
        bar.set_postfix(failed=0)
    bar.close()
    for _ in tqdm(range(4), desc="epochs", file=buf, mininterval=0, leave=False):
        pass
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[-1].startswith("epochs: 100%|") and "4/4" in lines[-1]
    assert any(line.startswith("runs: 100%|") and "failed=0" in line for line in lines)
    assert len(lines) == len(set(lines))  # a line is written once


def test_a_logged_cli_run_has_no_escape_codes(tmp_path):
    coloured_squares(tmp_path / "squares", num_classes=3, per_class=6, seed=0)
    done = subprocess.run(
        [sys.executable, "-m", "fewclip", "run", "--method", "zero_shot", "--shots", "0"]
        + ["--dataset", "folder:squares", "--data-root", str(tmp_path)]
        + ["--backbone", "fewclip-test-rn", "--pretrained", "none", "--results", ""]
        + ["--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "%|" in done.stderr  # progress was written ...
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # ... as plain lines
