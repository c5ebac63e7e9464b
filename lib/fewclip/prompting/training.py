"""The encoder-level variant of the one training loop (:func:`fewclip.training.train_epochs`),
with Dassl's optimiser and schedule.

Dassl (the CoOp / CoCoOp / APEX code base) steps the learning rate once per epoch
(:func:`fewclip.training.dassl_lr_factor`: warm-up, then cosine).

Every epoch shuffles the training set with a seeded generator and, like Dassl's train
loader, drops the last incomplete batch when there is at least one full batch. After each
epoch the validation accuracy is measured and recorded (``FitResult.history``: epoch,
mean loss, val accuracy, lr) and the best state is kept and restored at the end
(``selection="val"``), or the last state is kept (``selection="last"``: the official
CoOp/CoCoOp/APEX behaviour, which never looks at val).

Ties go to the *later* epoch (``ties="last"``). Few-shot val sets hold a few dozen images,
so equal accuracies are common, and epoch 0 is CoOp's warm-up epoch at lr 1e-5, i.e. the
initial prompt: keeping the first best (Dassl's ``best_val`` rule, ``ties="first"``)
then returns a nearly untrained model although the later one is as good on val and
closer to the official last-epoch choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..fitting import FitResult
from ..training import dassl_lr_factor, train_epochs

SELECTIONS = ("val", "last")
TIES = ("last", "first")


def augmentation_seed(seed: int, epoch: int) -> int:
    """Seed of the augmentations of epoch (or cached view) ``epoch`` for a run seed."""
    return seed * 100_003 + epoch


def epoch_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: int = 0,
    warmup_type: str = "constant",
    warmup_lr: float = 1e-5,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's cosine schedule with warm-up; call ``step()`` once per epoch."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda e: dassl_lr_factor(e, epochs, base_lr, warmup_epochs, warmup_type, warmup_lr),
    )


def build_optimizer(
    params: Iterable[nn.Parameter] | list[dict],
    name: str,
    lr: float,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Dassl's optimisers: SGD (momentum 0.9, no Nesterov), Adadelta, Adam, AdamW.

    ``params``: parameters, or parameter groups (dicts, e.g. with their own ``lr``)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adadelta, adam or adamw")


def epoch_batches(
    num: int, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> list[list[int]]:
    """One epoch of shuffled index batches; the last short batch is dropped (Dassl) when
    ``drop_last`` and there is at least one full batch."""
    order = torch.randperm(num, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, num, batch_size)]
    if drop_last and num >= batch_size and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


class Stepper:
    """Backward + optimiser step, with fp16 loss scaling when the backbone runs in fp16."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, precision: str):
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "amp")

    def __call__(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


def fit_loop(
    module: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    run_epoch: Callable[[int], list[float]],
    validate: Callable[[], float | None],
    selection: str = "val",
    progress: bool = False,
    desc: str = "train",
    ties: str = "last",
    record: Callable[[], dict[str, float]] | None = None,
) -> FitResult:
    """Run ``epochs`` epochs; ``run_epoch(e)`` trains one epoch and returns its step losses,
    ``validate()`` returns the val accuracy in percent (None: no val data, the last epoch
    is kept, ``RunConfig(val="none")``); ``record()`` (optional) returns
    extra values to keep in each epoch's ``history`` row. Restores the selected state
    (``ties``: which of equally good epochs, see the module docstring). The schedule
    steps once per epoch (:func:`fewclip.training.train_epochs`, ``step="epoch"``)."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    if ties not in TIES:
        raise ValueError(f"unknown ties rule {ties!r}; choose one of {TIES}")
    result = train_epochs(
        module,
        scheduler,
        epochs,
        run_epoch,
        validate,
        keep="best" if selection == "val" else "last",
        ties=ties,
        step="epoch",
        record=record,
        progress=progress,
        desc=desc,
    )
    result.chosen["selection"] = selection
    return result
