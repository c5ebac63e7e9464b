"""The training loop of the encoder-level methods, with Dassl's optimiser and schedule.

Dassl (the CoOp / CoCoOp / APEX code base) steps the learning rate once per epoch:
``W`` warm-up epochs at a fixed rate (``constant``: ``warmup_lr``; ``linear``: ``warmup_lr``
in epoch 0, then ``lr * e / W``), after which epoch ``e`` runs at the cosine rate of step
``e - W`` over ``epochs`` steps:

    lr(e) = lr * (1 + cos(pi * (e - W) / epochs)) / 2                     for e >= W

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

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..fitting import FitResult

SELECTIONS = ("val", "last")
TIES = ("last", "first")


def augmentation_seed(seed: int, epoch: int) -> int:
    """Seed of the augmentations of epoch (or cached view) ``epoch`` for a run seed."""
    return seed * 100_003 + epoch


def dassl_lr_factor(
    epoch: int,
    epochs: int,
    base_lr: float,
    warmup_epochs: int = 0,
    warmup_type: str = "constant",
    warmup_lr: float = 1e-5,
) -> float:
    """Multiplier of ``base_lr`` in a given epoch (see the module docstring)."""
    if epoch < warmup_epochs:
        if warmup_type == "constant" or epoch == 0:
            return warmup_lr / base_lr
        if warmup_type == "linear":
            return epoch / warmup_epochs
        raise ValueError(f"unknown warm-up type {warmup_type!r}; choose constant or linear")
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


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


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


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
    (``ties``: which of equally good epochs, see the module docstring)."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    if ties not in TIES:
        raise ValueError(f"unknown ties rule {ties!r}; choose one of {TIES}")
    result = FitResult()
    best_state = _snapshot(module)
    best_acc = -1.0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        module.train()
        lr = scheduler.get_last_lr()[0]
        losses = run_epoch(epoch)
        with warnings.catch_warnings():
            # fp16 loss scaling may skip the very first optimiser step; that is expected
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        module.eval()
        with torch.no_grad():
            val_acc = validate()
        loss = sum(losses) / max(1, len(losses))
        extra = record() if record is not None else {}
        row = {"epoch": epoch, "loss": loss, "val_acc": val_acc, "lr": lr, **extra}
        if val_acc is None:
            del row["val_acc"]
        result.history.append(row)
        bar.set_postfix(loss=f"{loss:.3f}", val="-" if val_acc is None else f"{val_acc:.1f}")
        if val_acc is None:
            better = True
        else:
            better = val_acc >= best_acc if ties == "last" else val_acc > best_acc
        if selection == "last" or better:
            best_acc = val_acc
            result.best_epoch = epoch
            best_state = _snapshot(module)
    module.load_state_dict(best_state)
    module.eval()
    result.best_val_acc = best_acc
    result.chosen["selection"] = selection
    return result
