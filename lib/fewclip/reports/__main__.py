"""``python -m fewclip.reports ARGS``: the same as ``python -m fewclip reports ARGS``; the
command line, its parsing included, is :mod:`fewclip.cli`'s (``cmd_reports``)."""

import runpy
import sys

sys.argv = ["fewclip", "reports", *sys.argv[1:]]
runpy.run_module("fewclip", run_name="__main__", alter_sys=True)
