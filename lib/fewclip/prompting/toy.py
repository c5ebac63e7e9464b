"""A synthetic image task for tests and benchmarks of the prompt learners.

Class ``c`` is a square of colour ``COLOURS[c]`` at a random place on a noisy grey
background; images are small PNG files, so the whole pipeline (files -> transforms ->
encoder) runs as for a real dataset, in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.base import Datum

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 230, 30),
    "magenta": (220, 40, 220),
    "cyan": (40, 220, 230),
    "orange": (250, 140, 20),
    "black": (10, 10, 10),
}


def coloured_squares(
    folder: str | Path,
    num_classes: int = 4,
    per_class: int = 8,
    size: int = 32,
    seed: int = 0,
    offset: int = 0,
) -> tuple[list[Datum], list[str]]:
    """Write ``per_class`` images per class under ``folder``; returns (items, classnames).

    ``offset`` skips the first colours (e.g. classes 4..7 as "new" classes).
    """
    names = list(COLOURS)[offset : offset + num_classes]
    if len(names) < num_classes:
        raise ValueError(f"at most {len(COLOURS) - offset} classes from offset {offset}")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    items = []
    for label, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = 128 + rng.normal(0, 25, (size, size, 3))
            side = int(rng.integers(size // 2, size * 3 // 4 + 1))
            y, x = rng.integers(0, size - side + 1, 2)
            image[y : y + side, x : x + side] = COLOURS[name] + rng.normal(0, 10, 3)
            path = folder / name / f"{i}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
            items.append(Datum(str(path), label, name))
    return items, names
