"""``python -m fewclip <verb>``: see :mod:`fewclip.cli`."""

import sys

from .cli import main

sys.exit(main())
