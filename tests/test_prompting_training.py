"""Dassl schedule, epoch batches and the best-epoch loop of the encoder-level methods."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewclip.prompting.training import (
    build_optimizer,
    dassl_lr_factor,
    epoch_batches,
    epoch_scheduler,
    fit_loop,
)


def lrs(optimizer_name, lr, epochs, **kw):
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], optimizer_name, lr)
    sched = epoch_scheduler(opt, epochs, **kw)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_warmup_then_cosine_per_epoch():
    """CoOp: epoch 0 at 1e-5, then epoch e at cos step e - 1 over all epochs."""
    got = lrs("sgd", 0.002, 5, warmup_epochs=1, warmup_type="constant", warmup_lr=1e-5)
    expected = [1e-5] + [0.002 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(4)]
    assert got == pytest.approx(expected, rel=1e-6)


def test_linear_warmup_starts_at_min_lr():
    """APEX: Adadelta 0.15 with one linear warm-up epoch at 0.01."""
    got = lrs("adadelta", 0.15, 15, warmup_epochs=2, warmup_type="linear", warmup_lr=1e-2)
    assert got[0] == pytest.approx(0.01)
    assert got[1] == pytest.approx(0.075)
    assert got[2] == pytest.approx(0.15)
    assert got[-1] < got[2] and all(a >= b for a, b in zip(got[2:], got[3:], strict=False))
    assert dassl_lr_factor(3, 10, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_optimizers_and_errors():
    p = nn.Parameter(torch.zeros(1))
    sgd = build_optimizer([p], "sgd", 0.1, weight_decay=5e-4)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 5e-4
    assert isinstance(build_optimizer([p], "adadelta", 0.15), torch.optim.Adadelta)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer([p], "lion", 0.1)
    with pytest.raises(ValueError, match="warm-up"):
        dassl_lr_factor(1, 10, 0.1, warmup_epochs=2, warmup_type="cubic")


def test_epoch_batches_drop_last_like_dassl():
    g = torch.Generator().manual_seed(0)
    batches = epoch_batches(10, 4, g)
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(sum(batches, []))) == 8
    assert [len(b) for b in epoch_batches(3, 4, g)] == [3]  # fewer than a batch: keep it
    assert [len(b) for b in epoch_batches(10, 4, g, drop_last=False)] == [4, 4, 2]
    again = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    assert again == batches


@pytest.mark.parametrize(
    "selection,ties,best", [("val", "last", 2), ("val", "first", 1), ("last", "last", 3)]
)
def test_fit_loop_restores_the_selected_epoch(selection, ties, best):
    module = nn.Linear(1, 1, bias=False)
    opt = build_optimizer(module.parameters(), "sgd", 0.1)
    sched = epoch_scheduler(opt, 4)
    accs = iter([10.0, 50.0, 50.0, 20.0])

    def run_epoch(epoch):
        opt.step()
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        return [1.0 / (epoch + 1)]

    result = fit_loop(module, sched, 4, run_epoch, lambda: next(accs), selection, ties=ties)
    assert result.best_epoch == best
    assert module.weight.item() == float(best)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert result.history[2]["loss"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="selection"):
        fit_loop(module, sched, 1, run_epoch, lambda: 0.0, "test")


def test_fit_loop_picks_a_later_epoch_when_val_improves():
    """A known answer: val accuracy rises with training, so the last epoch is chosen and
    every epoch's val accuracy is in the history."""
    module = nn.Linear(1, 1, bias=False)
    opt = build_optimizer(module.parameters(), "sgd", 0.1)
    sched = epoch_scheduler(opt, 5, 1, "constant", 1e-5)
    accs = [25.0, 25.0, 40.0, 60.0, 60.0]
    it = iter(accs)
    result = fit_loop(module, sched, 5, lambda e: [0.0], lambda: next(it))
    assert [h["val_acc"] for h in result.history] == accs
    assert result.best_epoch == 4 and result.best_val_acc == 60.0
    with pytest.raises(ValueError, match="ties"):
        fit_loop(module, sched, 1, lambda e: [0.0], lambda: 0.0, ties="middle")
