"""Images to tensors: the test and train transforms, and a dataset over :class:`Datum` lists.

An unreadable image never stops a long run: :class:`ImageDataset` returns a zero image with
``ok = False`` and warns once per file; callers count and drop those rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision import transforms as T

from .data.base import Datum

#: Tip-Adapter / DualAdapter augmentation: random resized crop with this scale range.
CACHE_CROP_SCALE = (0.5, 1.0)
#: Dassl (CoOp, CoCoOp, APEX) augmentation scale range.
DASSL_CROP_SCALE = (0.08, 1.0)


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = CACHE_CROP_SCALE,
) -> Callable:
    """Random resized crop (bicubic) + horizontal flip + CLIP normalisation."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.Lambda(lambda im: im.convert("RGB")),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; transparent images are composited on white."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, im).convert("RGB")
        return im.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """Items -> (image tensor, label, index, ok).

    With ``seed`` given, item ``i`` is transformed under a generator seeded by
    ``(seed, i)``, so random augmentations are the same whatever the worker count or order.
    """

    def __init__(
        self,
        items: Sequence[Datum],
        transform: Callable,
        image_size: int,
        seed: int | None = None,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, bool]:
        item = self.items[i]
        try:
            image = load_rgb(item.impath)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            warnings.warn(f"unreadable image skipped: {item.impath} ({e})", stacklevel=2)
            blank = torch.zeros(3, self.image_size, self.image_size)
            return blank, item.label, i, False
        if self.seed is None:
            return self.transform(image), item.label, i, True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.transform(image), item.label, i, True


def image_loader(
    items: Sequence[Datum],
    transform: Callable,
    image_size: int,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over items; ``shuffle`` order is drawn from ``seed`` too."""
    generator = None
    if shuffle:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    return DataLoader(
        ImageDataset(items, transform, image_size, seed=seed),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
    )
