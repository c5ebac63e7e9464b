"""DualAdapter's settings: the official per-dataset values (zhangce01/DualAdapter
``configs/<dataset>.yaml``), overridden by the method's options.

Beta and alpha ranges and initial values are for CLIP's logit scale s = 100 (the method
rescales them, :func:`fewclip.methods.search.grid_scales`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .search import linear_grid

Range = tuple[float, float, int]  # (start, stop, steps), stop excluded


@dataclass(frozen=True)
class DualDefaults:
    """One dataset's official settings (configs/<dataset>.yaml), beta/alpha for s = 100."""

    epochs: int
    beta: Range
    alpha: Range
    init_beta: float
    init_alpha: float
    lam: Range = (0.6, 1.0, 20)
    init_lam: float = 0.75
    lr: float = 1e-4
    eps: float = 1e-3
    eps_low_shot: float | None = None  # eps for 1 and 2 shots, where the config says so


DUAL_DEFAULTS: dict[str, DualDefaults] = {
    "imagenet": DualDefaults(20, (0, 4, 200), (0, 4, 40), 2, 1.2, lam=(0.6, 0.9, 20)),
    "caltech101": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 5),
    "dtd": DualDefaults(20, (0, 7, 200), (0, 7, 40), 1, 3),
    "eurosat": DualDefaults(200, (0, 20, 200), (0, 5, 20), 6, 1.5, lam=(0.3, 0.9, 10)),
    "fgvc_aircraft": DualDefaults(30, (0, 20, 200), (0, 10, 40), 3, 8, lr=5e-4),
    "food101": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 0.8, eps_low_shot=1e-2),
    "oxford_flowers": DualDefaults(60, (0, 7, 200), (0, 7, 40), 1, 3),
    "oxford_pets": DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 2),
    "stanford_cars": DualDefaults(30, (0, 15, 100), (0, 10, 20), 2, 1, eps=5e-3),
    "sun397": DualDefaults(30, (0, 10, 200), (0, 7, 40), 5, 3),
    "ucf101": DualDefaults(30, (0, 15, 100), (0, 7, 20), 1, 1, eps=2e-3),
}
# Datasets without an official config (e.g. the offline tasks): the most common row.
DUAL_GENERIC = DualDefaults(30, (0, 7, 200), (0, 7, 40), 1, 3)


def dual_defaults(dataset: str | None) -> DualDefaults:
    return DUAL_DEFAULTS.get(dataset or "", DUAL_GENERIC)


def initial_setting(options, beta_scale: float, alpha_scale: float) -> tuple[float, float, float]:
    """(beta, alpha, lam) while training: the options' values, else the dataset's; beta and
    alpha times their scales; lam 1 / 0 on the positive / negative path alone."""
    o, d = options, dual_defaults(options.dataset)
    beta = beta_scale * (o.init_beta if o.init_beta is not None else d.init_beta)
    alpha = alpha_scale * (o.init_alpha if o.init_alpha is not None else d.init_alpha)
    lam = {"positive": 1.0, "negative": 0.0}.get(
        o.paths, o.init_lam if o.init_lam is not None else d.init_lam
    )
    return beta, alpha, lam


def search_grids(options, beta_scale: float, alpha_scale: float):
    """The (betas, alphas, lams) of the search: the options' ranges, else the dataset's,
    beta's and alpha's times their scales; lam fixed (one value) on one path alone or
    without ``search_lam``."""
    o, d = options, dual_defaults(options.dataset)
    betas = linear_grid(*(o.beta_range or d.beta), scale=beta_scale)
    alphas = linear_grid(*(o.alpha_range or d.alpha), scale=alpha_scale)
    if o.paths != "both" or not o.search_lam:
        return betas, alphas, [initial_setting(o, beta_scale, alpha_scale)[2]]
    return betas, alphas, linear_grid(*(o.lam_range or d.lam))
