"""``python -m fewclip.offline prepare --data-root DIR`` (see :mod:`fewclip.offline.prepare`)."""

import sys

from .prepare import main

sys.exit(main())
