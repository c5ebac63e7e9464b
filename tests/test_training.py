"""The shared training loop's optimiser: fused AdamW where it can be, the same update."""

from __future__ import annotations

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
