"""Progress bars that suit where the output goes.

On a terminal: tqdm's bar. In a Jupyter kernel: tqdm's notebook widget (``tqdm.auto``).
Anywhere else (a log file, a pipe, CI, a batch job): plain lines, one every ``mininterval``
seconds and one at the end, with no carriage returns and no escape codes, so a log reads
line by line::

    features: 40%|####      | 2/5 [00:01<00:01, 1.9it/s]

Use it as tqdm: ``from .progress import tqdm``.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm as _terminal_tqdm
from tqdm.auto import tqdm as _auto_tqdm

#: Seconds between two plain progress lines (the last one is always written).
PLAIN_INTERVAL = 30.0


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress(_terminal_tqdm):
    """tqdm writing whole lines (``desc: n/total ...``) instead of redrawing one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", PLAIN_INTERVAL)
        kwargs["ascii"] = True
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 80)
        self._last_line = ""
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line: nothing to clear
            return False
        line = (msg if msg is not None else self.__str__()).strip()
        if line and line != self._last_line:
            self.fp.write(line + "\n")
            self.fp.flush()
            self._last_line = line
        return False

    def close(self) -> None:
        if not self.disable and not getattr(self, "_plain_closed", False):
            self._plain_closed = True
            self.display()  # the final state, once
        self.leave = False
        super().close()


def tqdm(*args: Any, **kwargs: Any):
    """A progress bar (tqdm's arguments): tqdm on a terminal or in a notebook,
    :class:`PlainProgress` when the output is neither."""
    if kwargs.get("disable"):
        return _terminal_tqdm(*args, **kwargs)
    if _in_notebook():
        return _auto_tqdm(*args, **kwargs)
    if _is_terminal(kwargs.get("file") or sys.stderr):
        return _terminal_tqdm(*args, **kwargs)
    return PlainProgress(*args, **kwargs)
