"""What the key-value cache methods (Tip-Adapter, DualAdapter) share, written once.

A cache method keeps an ``nn.Module`` (:class:`CacheModule`) whose forward takes normalised
features and a setting of hyper-parameters (Tip-Adapter: beta, alpha; DualAdapter: beta,
alpha, lam), evaluated in chunks of rows so that its (rows, M) affinities stay bounded.
Its search runs the module's forward in two stages (``terms`` once per chunk of val,
``components`` per beta, ``combine`` over the (alpha, lam) grid; :mod:`.search`), and
its logits are the module's forward at the chosen setting (``chosen``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import FeatureData, FeatureMethod
from .kernels.cache import chunked, row_chunks
from .search import SearchResult, grid_scales, grid_search_chunked

Range = tuple[float, float, int]  # (start, stop, steps), stop excluded
LOGITS_CHUNK: int | None = None  # images per forward at evaluation; None: row_chunks(M)


class CacheModule(nn.Module):
    """A cache forward ``module(f, *setting)`` with its keys in ``self.keys`` (M, d)."""

    #: False: the plain formulas and an exhaustive search (a module may switch it)
    fast: bool = True

    def rows(self) -> int:
        """Images per chunk at evaluation, so that an (rows, M) affinity stays bounded."""
        return LOGITS_CHUNK or row_chunks(self.keys.shape[0])

    def chunked(self, f: torch.Tensor, *setting: float) -> torch.Tensor:
        """The forward over f (N, d) in chunks of :meth:`rows` (memory flat in N)."""
        return chunked(lambda x: self(x.float(), *setting), f, self.rows())


class CacheMethod(FeatureMethod):
    """A feature method whose model is a :class:`CacheModule` searched on val.

    Subclasses set :attr:`setting` (the names of the forward's hyper-parameters, in
    order), build ``module`` in ``fit``, and give ``grids(data)`` (one grid per name).
    """

    setting: ClassVar[tuple[str, ...]] = ("beta", "alpha")
    module: CacheModule | None = None
    chosen: dict | None = None

    def _scales(self, data: FeatureData) -> tuple[float, float]:
        """The factors of the official beta and alpha grids (:func:`.search.grid_scales`)."""
        o = self.options
        return grid_scales(data.logit_scale, o.beta_scale, o.alpha_scale)

    def _module(self) -> CacheModule:
        if self.module is None:
            raise RuntimeError(f"{self.name}: call fit() before logits()")
        return self.module

    def search(
        self, features: torch.Tensor, labels: torch.Tensor, data: FeatureData
    ) -> SearchResult:
        """The grid search of :attr:`setting` on (features, labels), vectorised, in chunks of
        features (the affinities are (rows, M): memory flat in the val size). The fast path
        prunes classes, counts alphas by intervals and stacks betas; the plain one counts
        every setting."""
        module = self._module()
        fast = module.fast
        with torch.no_grad():
            return grid_search_chunked(
                lambda f: module.terms(f.float()),
                module.components,
                module.combine,
                features,
                labels,
                *self.grids(data),
                rows=module.rows(),
                prune=fast,
                intervals=fast,
                stacked=module.stacked_components if fast else None,
            )

    def logits(self, features: torch.Tensor, **setting: float | None) -> torch.Tensor:
        """(B, d) -> (B, C) at the chosen setting, or at the values given by name."""
        unknown = set(setting) - set(self.setting)
        if unknown:
            raise TypeError(f"{self.name}: logits takes {self.setting}, not {sorted(unknown)}")
        module, chosen = self._module(), self.chosen
        values = [chosen[k] if setting.get(k) is None else setting[k] for k in self.setting]
        with torch.no_grad():  # in chunks: the affinities are (B, M)
            return module.chunked(features, *values)
