"""Images to tensors: the test and train transforms, and a dataset over :class:`Datum` lists.

An unreadable image never stops a long run: :class:`ImageDataset` returns a zero image with
``ok = False`` and warns once per file; callers count and drop those rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from .data.base import Datum

#: Tip-Adapter / DualAdapter augmentation: random resized crop with this scale range.
CACHE_CROP_SCALE = (0.5, 1.0)
#: Dassl (CoOp, CoCoOp, APEX) augmentation scale range.
DASSL_CROP_SCALE = (0.08, 1.0)


class TrainTransform:
    """Random resized crop (bicubic) + horizontal flip + CLIP normalisation.

    ``transform(image, generator=g)`` draws its randomness from ``g`` (a local
    :class:`torch.Generator`); without one, from torch's global generator. The draws are
    torchvision's ``RandomResizedCrop`` / ``RandomHorizontalFlip`` draws, made in the same
    order with the same calls, so a generator seeded with s gives exactly the image that
    ``torch.manual_seed(s)`` followed by the torchvision transforms gives (a test pins it),
    without forking and reseeding the global RNG for every image (docs/design/speed.md).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = CACHE_CROP_SCALE,
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        self.size = [image_size, image_size]
        self.scale = scale
        self.ratio = ratio
        self.log_ratio = [float(v) for v in torch.log(torch.tensor(ratio))]
        from torchvision import transforms as T  # lazy: torchvision's import is seconds

        self.normalize = T.Normalize(mean, std)

    def crop_box(self, width: int, height: int, generator: torch.Generator | None):
        """(top, left, h, w) of the crop: torchvision's ``RandomResizedCrop.get_params``
        (10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio, then a
        central crop)."""
        area = height * width
        for _ in range(10):
            fraction = torch.empty(1).uniform_(*self.scale, generator=generator).item()
            log_aspect = torch.empty(1).uniform_(*self.log_ratio, generator=generator)
            aspect = torch.exp(log_aspect).item()
            w = int(round(math.sqrt(area * fraction * aspect)))
            h = int(round(math.sqrt(area * fraction / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
                left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """PIL image -> (3, image_size, image_size) normalised tensor."""
        from torchvision import transforms as T
        from torchvision.transforms import functional as TF

        top, left, h, w = self.crop_box(image.width, image.height, generator)
        image = TF.resized_crop(
            image, top, left, h, w, self.size, T.InterpolationMode.BICUBIC, antialias=True
        )
        if torch.rand(1, generator=generator) < 0.5:
            image = TF.hflip(image)
        return self.normalize(TF.to_tensor(image.convert("RGB")))


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = CACHE_CROP_SCALE,
) -> TrainTransform:
    """Random resized crop (bicubic) + horizontal flip + CLIP normalisation
    (:class:`TrainTransform`; accepts a local ``generator``)."""
    return TrainTransform(image_size, mean, std, scale=scale)


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
        seed = self.seed * 1_000_003 + i
        if isinstance(self.transform, TrainTransform):  # a local generator: no global state
            generator = torch.Generator().manual_seed(seed)
            return self.transform(image, generator=generator), item.label, i, True
        with torch.random.fork_rng(devices=[]):  # any other transform: the global RNG
            torch.manual_seed(seed)
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
