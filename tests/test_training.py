"""The one training loop (keep, ties, schedule steps) and its optimiser: fused AdamW where it
can be, the same update."""

from __future__ import annotations

import pytest
import torch

from fewclip.methods.training import adamw


def run(optimizer_fn, params, steps: int = 30) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    optimizer = optimizer_fn(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        optimizer.step()
    return [p.detach() for p in params]


def test_adamw_is_fused_on_cpu_float32_and_equals_the_loop_to_rounding():
    def params(dtype=torch.float32):
        g = torch.Generator().manual_seed(1)
        return [torch.nn.Parameter(torch.randn(300, 70, generator=g, dtype=dtype)) for _ in "ab"]

    def groups(ps):
        return [{"params": [ps[0]], "lr": 1e-3}, {"params": [ps[1]], "lr": 5e-3}]

    kw = dict(weight_decay=0.1, eps=1e-3)
    fused = adamw(groups(params()), **kw)
    assert fused.defaults["fused"]
    ours = run(lambda ps: adamw(groups(ps), **kw), params())
    loop = run(lambda ps: torch.optim.AdamW(groups(ps), **kw), params())
    start = params()
    for a, b, p0 in zip(ours, loop, start, strict=True):
        assert (a - p0).abs().max() > 1e-2  # the parameters did move
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    # float64 parameters keep torch's default implementation
    assert not adamw(params(torch.float64), lr=1e-3).defaults["fused"]


# -- the one loop: fewclip.training.train_epochs ---------------------------------------------


def _loop(step: str, keep: str, ties: str, accs: list[float | None]):
    from fewclip.training import train_epochs

    module = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (i + 1))
    values = iter(accs)

    def run_epoch(epoch: int) -> list[float]:
        losses = []
        for _ in range(2):  # two steps per epoch
            optimizer.step()
            if step == "iteration":
                scheduler.step()
            losses.append(float(epoch))
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        return losses

    result = train_epochs(
        module,
        scheduler,
        len(accs),
        run_epoch,
        lambda: next(values),
        keep=keep,
        ties=ties,
        step=step,
    )
    return module, result


@pytest.mark.parametrize(
    "keep,ties,best", [("best", "first", 1), ("best", "last", 2), ("last", "first", 3)]
)
def test_train_epochs_keeps_the_chosen_epoch(keep, ties, best):
    """keep best (first or last of equal epochs) or last; the state of that epoch restored."""
    module, result = _loop("epoch", keep, ties, [10.0, 50.0, 50.0, 20.0])
    assert result.best_epoch == best and module.weight.item() == float(best)
    assert result.best_val_acc == [10.0, 50.0, 50.0, 20.0][best]
    assert [h["loss"] for h in result.history] == [0.0, 1.0, 2.0, 3.0]


def test_train_epochs_steps_the_schedule_per_epoch_or_per_iteration():
    """The lr recorded for epoch e is the rate it trained at: 1 / (e + 1) stepped per epoch,
    1 / (2 e + 1) stepped per iteration (two steps an epoch)."""
    _, per_epoch = _loop("epoch", "best", "first", [1.0, 2.0, 3.0])
    _, per_step = _loop("iteration", "best", "first", [1.0, 2.0, 3.0])
    assert [h["lr"] for h in per_epoch.history] == pytest.approx([1.0, 1 / 2, 1 / 3])
    assert [h["lr"] for h in per_step.history] == pytest.approx([1.0, 1 / 3, 1 / 5])


def test_train_epochs_without_val_keeps_the_last_and_refuses_unknown_options():
    module, result = _loop("epoch", "best", "first", [None, None])
    assert result.best_epoch == 1 and result.best_val_acc is None
    assert all("val_acc" not in h for h in result.history)
    with pytest.raises(ValueError, match="unknown ties 'middle'"):
        _loop("epoch", "best", "middle", [1.0])
