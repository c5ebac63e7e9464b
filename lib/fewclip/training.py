"""The one training loop of every method that learns by gradient descent, below both method
families (feature-level :mod:`fewclip.methods`, encoder-level :mod:`fewclip.prompting`).

Per epoch: the module in train mode, ``run_epoch(e)`` trains one epoch and returns its
step losses, the schedule steps once (``step="epoch"``, Dassl's encoder-level codes) or
``run_epoch`` has stepped it per iteration (``step="iteration"``), the module in eval mode,
``validate()`` returns the val accuracy in percent (None: no val data, the last epoch is
kept). ``history`` holds per epoch the mean loss, the val accuracy and the learning rate of
the first parameter group during that epoch (plus ``record()``'s values). The selected
state is restored at the end:

- ``keep="best"``: the best val accuracy, ``ties="first"`` (Dassl's ``best_val`` rule,
  the feature-level methods) or ``ties="last"`` (the later of equally good epochs);
- ``keep="last"``: the last epoch (the official CoOp / CoCoOp / APEX behaviour, which never
  looks at val).

Dassl's cosine schedule with warm-up is :func:`dassl_lr_factor`, for both families.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .fitting import FitResult
from .progress import tqdm

KEEPS = ("best", "last")
TIES = ("last", "first")
STEPS = ("iteration", "epoch")


def dassl_lr_factor(
    epoch: int,
    epochs: int,
    base_lr: float,
    warmup_epochs: int = 0,
    warmup_type: str = "constant",
    warmup_lr: float = 1e-5,
) -> float:
    """Multiplier of ``base_lr`` in a given epoch (from 0) under Dassl's schedule.

    ``W`` = ``warmup_epochs`` warm-up epochs at a fixed rate (``constant``: ``warmup_lr``;
    ``linear``: ``warmup_lr`` in epoch 0, then ``lr * e / W``); then, with Dassl's default
    ``WARMUP_RECOUNT=True``, the cosine counts from the end of the warm-up:

        lr(e) = lr * (1 + cos(pi * (e - W) / epochs)) / 2                     for e >= W
    """
    if epoch < warmup_epochs:
        if warmup_type == "constant" or epoch == 0:
            return warmup_lr / base_lr
        if warmup_type == "linear":
            return epoch / warmup_epochs
        raise ValueError(f"unknown warm-up type {warmup_type!r}; choose constant or linear")
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def snapshot(module: nn.Module) -> dict:
    """A copy of ``module``'s state: its tensors cloned (what ``copy.deepcopy`` of the
    state dict gives, without its per-object bookkeeping); anything else (extra state)
    deep-copied."""
    return {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in module.state_dict().items()
    }


def train_epochs(
    module: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    run_epoch: Callable[[int], list[float]],
    validate: Callable[[], float | None],
    *,
    keep: str = "best",
    ties: str = "first",
    step: str = "iteration",
    record: Callable[[], dict[str, float]] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """Run ``epochs`` epochs and restore the kept state (see the module docstring)."""
    for name, value, allowed in (
        ("keep", keep, KEEPS),
        ("ties", ties, TIES),
        ("step", step, STEPS),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
    result = FitResult()
    best_state = snapshot(module)
    best_acc = -1.0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        module.train()
        lr = scheduler.optimizer.param_groups[0]["lr"]
        losses = run_epoch(epoch)
        if step == "epoch":
            with warnings.catch_warnings():
                # fp16 loss scaling may skip the very first optimiser step; that is expected
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
        module.eval()
        with torch.no_grad():
            val_acc = validate()
        loss = sum(losses) / max(1, len(losses))
        row = {"epoch": epoch, "loss": loss, "val_acc": val_acc, "lr": lr}
        row.update(record() if record is not None else {})
        if val_acc is None:
            del row["val_acc"]
        result.history.append(row)
        if progress:
            bar.set_postfix(loss=f"{loss:.3f}", val="-" if val_acc is None else f"{val_acc:.1f}")
        if val_acc is None or keep == "last":
            better = True
        else:
            better = val_acc >= best_acc if ties == "last" else val_acc > best_acc
        if better:
            best_acc = val_acc
            result.best_epoch = epoch
            best_state = snapshot(module)
    module.load_state_dict(best_state)
    module.eval()
    result.best_val_acc = best_acc
    return result
