"""Training for methods that change the image encoder's computation (deep visual prompts,
LoRA): every step re-encodes freshly augmented images, as the official Dassl trainers do.

A subclass names its official configs (``CONFIGS``: config name -> defaults of the options
left at None) and which protocol uses which (:meth:`ReencodingMethod.config_name`),
builds its learner (``build``), and gives the training loss and the logits. The loop is
Dassl's: epoch ``e`` shuffles with the run's generator, draws Dassl's crop + flip for
item ``i`` from (:func:`~fewclip.prompting.training.augmentation_seed` (seed, e), i),
steps the cosine schedule once per epoch and validates on the few-shot val split (test
transform, loaded once). ``end_epoch`` runs after each epoch's validation (PromptSRC's
Gaussian prompt aggregation uses it).

Shapes: B images, C classes, d joint dimension.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..backbones import Backbone
from ..data.base import Datum
from ..fitting import FitResult
from .encoder_base import EncoderMethod, TrainOptions, batch_loader, top1
from .training import (
    Stepper,
    augmentation_seed,
    build_optimizer,
    epoch_batches,
    epoch_scheduler,
    fit_loop,
)

#: The run protocols (:data:`fewclip.config.PROTOCOLS`).
PROTOCOLS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalisation")
#: Protocols trained on a source and tested on other datasets or domains.
TRANSFER_PROTOCOLS = ("cross_dataset", "domain_generalisation")


@dataclass
class ReencodingOptions(TrainOptions):
    """Options left at None take the official config of the run's ``protocol``."""

    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    warmup_type: str | None = None
    warmup_lr: float | None = None
    augment: bool = True  # Dassl's random resized crop + flip (False: the test transform)
    protocol: str | None = None  # the run's protocol (set by the run layer)


def load_val(backbone: Backbone, items: Sequence[Datum]) -> tuple[torch.Tensor, torch.Tensor]:
    """The val images under the test transform, loaded once: ((N, 3, H, W), (N,) labels);
    no items (``RunConfig(val="none")``): empty tensors."""
    if not items:
        size = backbone.image_size
        return torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
    val = [(x[ok], y[ok]) for x, y, _, ok in batch_loader(backbone, items)]
    images = torch.cat([x for x, _ in val])
    return images, torch.cat([y for _, y in val]).to(backbone.device)


class ReencodingMethod(EncoderMethod):
    """An encoder method trained by re-encoding augmented images at every step."""

    #: config name -> defaults of the options that are None (see the module docstring)
    CONFIGS: ClassVar[dict[str, dict[str, Any]]]

    @dataclass
    class Options(ReencodingOptions):
        pass

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.protocol not in (None, *PROTOCOLS):
            raise ValueError(
                f"{self.name}: unknown protocol {self.options.protocol!r}; choose one of "
                f"{PROTOCOLS}"
            )

    def config_name(self) -> str:
        """The official config whose defaults apply (default: the first of ``CONFIGS``)."""
        return next(iter(self.CONFIGS))

    def resolved(self) -> dict[str, Any]:
        """The effective settings: each given option, else the official config's value."""
        name = self.config_name()
        out: dict[str, Any] = {"config": name}
        for key, default in self.CONFIGS[name].items():
            value = getattr(self.options, key)
            out[key] = default if value is None else value
        return out

    # ------------------------------------------------------------------ subclass parts

    @abstractmethod
    def build(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        generator: torch.Generator,
        settings: dict[str, Any],
    ) -> None:
        """Create ``self.learner`` (an nn.Module holding every learnable parameter)."""

    @abstractmethod
    def train_loss(
        self, backbone: Backbone, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, H, W) augmented images of the training classes, (B,) labels -> loss."""

    def start_fit(self, backbone: Backbone, train_items: Sequence[Datum]) -> None:  # noqa: B027
        """Called once before the first epoch (e.g. to cache frozen features)."""

    def end_epoch(self, epoch: int, epochs: int) -> None:  # noqa: B027
        """Called after epoch ``epoch``'s validation."""

    def finish(self, result: FitResult, validate) -> None:  # noqa: B027
        """Called after the loop restored the selected state (may replace it)."""

    # ------------------------------------------------------------------ training

    def prepare(
        self, backbone: Backbone, classnames: Sequence[str], seed: int = 0
    ) -> torch.Generator:
        """Build the learner at its initial state (what ``fit`` starts from); returns the
        seeded generator that ``fit`` goes on to use for shuffling."""
        self.train_classnames = tuple(classnames)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.build(backbone, self.train_classnames, generator, self.resolved())
        return generator

    def parameter_groups(self) -> list[dict]:
        learner = self._check_fitted()
        return [{"params": [p for p in learner.parameters() if p.requires_grad]}]

    def fit(
        self,
        backbone: Backbone,
        train_items: Sequence[Datum],
        val_items: Sequence[Datum],
        classnames: Sequence[str],
        seed: int = 0,
        *,
        progress: bool = False,
        num_workers: int = 0,
    ) -> FitResult:
        o = self.options
        settings = self.resolved()
        classnames = tuple(classnames)
        generator = self.prepare(backbone, classnames, seed)
        learner = self._check_fitted()
        epochs = settings["epochs"]
        optimizer = build_optimizer(
            self.parameter_groups(), o.optimizer, settings["lr"], o.weight_decay, o.momentum
        )
        scheduler = epoch_scheduler(
            optimizer, epochs, o.warmup_epochs, settings["warmup_type"], settings["warmup_lr"]
        )
        step = Stepper(optimizer, backbone.device, backbone.precision)
        val_images, val_labels = load_val(backbone, val_items)
        self.start_fit(backbone, train_items)
        used: set[int] = set()

        def run_epoch(epoch: int) -> list[float]:
            batches = epoch_batches(len(train_items), settings["batch_size"], generator)
            loader = batch_loader(
                backbone,
                train_items,
                batches,
                augmentation_seed(seed, epoch) if o.augment else None,
                num_workers=num_workers,
                scale=self.crop_scale(backbone),
            )
            losses = []
            for images, labels, index, ok in loader:
                used.update(index[ok].tolist())
                with backbone.autocast():
                    loss = self.train_loss(
                        backbone, images[ok].to(backbone.device), labels[ok].to(backbone.device)
                    )
                losses.append(step(loss))
            return losses

        def validate() -> float | None:
            if val_labels.numel() == 0:  # RunConfig(val="none"): the last epoch is kept
                return None
            return top1(self.logits(backbone, val_images, classnames).float(), val_labels)

        def validate_and_hook() -> float | None:
            acc = validate()
            self.end_epoch(len(result_epochs), epochs)
            result_epochs.append(acc)
            return acc

        result_epochs: list[float] = []
        result = fit_loop(
            learner,
            scheduler,
            epochs,
            run_epoch,
            validate_and_hook,
            o.selection,
            progress,
            desc=self.name,
            ties=o.ties,
            record=self.epoch_record,
        )
        self.finish(result, validate)
        result.chosen.update(settings)
        result.train_images = len(used)
        return result
