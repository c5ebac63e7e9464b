"""ProDA: prompt distribution learning (Lu, Liu, Zhang, Liu, Tian; CVPR 2022, arXiv 2205.03340).

K learnable prompts (:class:`~fewclip.prompting.prompt_ensemble.PromptEnsemble`) describe
each class K ways; their normalised text features t_kc (K, C, d) are taken as samples of a
Gaussian over the classifier weights, w_c ~ N(mu_c, Sigma), and training minimises an upper
bound of the expected cross-entropy under that Gaussian:

    mu_c     = (1/K) sum_k t_kc                                                   (C, d)
    Sigma_ij = (1/(K+1)) sum_k diag((t_ki - mu_i) * (t_kj - mu_j))    per dimension (d,)
    a_j(f)   = s mu_j . f + (s^2 / 2) f^T (Sigma_jj + Sigma_yy - 2 Sigma_jy) f
    L_surr   = CE(a(f), y)                   (a_y = s mu_y . f: the variance term is 0)
    L_div    = mean_{k != l} |cos(h_k, h_l)|    h_k = g([SOS, ctx_k, ".", EOT]), (K, d)
    loss     = L_surr + lambda * L_div
    logits   = s * f @ mu^T                   at inference (the mean classifier)

Sigma keeps the covariance between classes but only its diagonal in the feature dimensions,
so f^T Sigma_ij f = sum_d f_d^2 Sigma_ij[d] (:func:`proda_logits` computes the three terms
without the (d, C, C) tensor).

There is no official code. Defaults follow the paper where it is explicit and the readable
reimplementations where it is not (word_soups' ``proda_loss``; a ProDA ``PromptLearner``
whose layout is kept here): K = 32 prompts of M = 16 random N(0, 0.02) vectors, the class
token in front for K/4 of them, in the middle for K/4 and at the end for K/2
(``layout``), covariance normalised by K + 1 (``cov_ddof=-1``), mu not renormalised
(``normalize_mean``: word_soups renormalises), lambda = 1 (``weight``; word_soups: 0.1),
every prompt in every step (``prompt_batch``: a random subset per step, cycling through
the K, as the reimplementation's prompt batches). Schedule as CoOp (our choice): SGD lr
0.002, cosine per epoch after 1 constant warm-up epoch at 1e-5, batch 32, 50 / 100 / 200
epochs for 1 / 2-4 / 8-16 shots, under every protocol. Image features are cached
(``views``) and the best epoch is chosen on val (``selection="last"``: the last epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..prompting.encoder_base import FeaturePromptMethod, FeaturePromptOptions
from ..prompting.hand_crafted import resolve_phrase
from ..prompting.prompt_ensemble import LAYOUTS, PromptEnsemble, proda_positions
from ..prompting.text_prompts import TextTower
from .base import register_method
from .coop import coop_epochs


def proda_logits(
    features: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    cov_ddof: int = -1,
    normalize_mean: bool = False,
) -> torch.Tensor:
    """(B, C) surrogate logits a_j(f) (module docstring).

    features (B, d) normalised image features; text (K, C, d) normalised prompt features;
    labels (B,). The covariance is normalised by K - cov_ddof (-1: K + 1)."""
    k = text.shape[0]
    mean = text.mean(0)  # (C, d)
    centred = text - mean  # (K, C, d)
    denom = k - cov_ddof
    f2 = features.square()  # (B, d)
    var = f2 @ centred.square().sum(0).T / denom  # (B, C): f^T Sigma_jj f
    cross = torch.einsum("bd,kbd,kjd->bj", f2, centred[:, labels], centred) / denom
    var_y = var.gather(1, labels[:, None])  # (B, 1): f^T Sigma_yy f
    classifier = F.normalize(mean, dim=-1) if normalize_mean else mean
    return logit_scale * features @ classifier.T + 0.5 * logit_scale**2 * (var_y + var - 2 * cross)


def diversity_loss(context: torch.Tensor) -> torch.Tensor:
    """L_div = mean over pairs k != l of |cos(h_k, h_l)|; context (K, d). 0 for K = 1."""
    k = context.shape[0]
    if k < 2:
        return context.sum() * 0.0
    h = F.normalize(context.float(), dim=-1)
    cos = h @ h.T
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    return cos[off].abs().mean()


@register_method
class ProDA(FeaturePromptMethod):
    """A Gaussian over the class features of K learned prompts, trained by its surrogate loss."""

    name = "proda"
    init_option = "init"
    no_val_options: ClassVar[dict] = {"selection": "last"}  # fixed epochs, the last kept

    @dataclass
    class Options(FeaturePromptOptions):
        n_prompts: int = 32  # K
        n_ctx: int = 16  # M (random init); with ``init``: the phrase's words
        layout: str = "proda"  # "proda" (K/4 front, K/4 middle, K/2 end) or one position
        init: str | None = None  # None: random; "backbone", "official" or a phrase
        weight: float = 1.0  # lambda of L_div
        cov_ddof: int = -1  # covariance normalised by K - cov_ddof (K + 1)
        normalize_mean: bool = False  # renormalise mu_c (word_soups) or not
        prompt_batch: int | None = None  # prompts per step; None: all K

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if o.layout not in LAYOUTS:
            raise ValueError(f"proda: unknown layout {o.layout!r}; choose one of {LAYOUTS}")
        if o.n_prompts < 1 or o.n_prompts - o.cov_ddof <= 0:
            raise ValueError(
                f"proda: n_prompts must be >= 1 and n_prompts - cov_ddof > 0, got "
                f"{o.n_prompts}, {o.cov_ddof}"
            )
        if o.prompt_batch is not None and not 1 <= o.prompt_batch <= o.n_prompts:
            raise ValueError(
                f"proda: prompt_batch must be in [1, n_prompts={o.n_prompts}], got {o.prompt_batch}"
            )
        if o.weight < 0:
            raise ValueError(f"proda: weight must be >= 0, got {o.weight}")
        self._means: dict[tuple[str, ...], torch.Tensor] = {}
        self._queue: list[int] = []

    def default_epochs(self, shots: int) -> int:
        return coop_epochs(shots)

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        self._means = {}  # fit restored the selected epoch's prompts: cached means are stale
        return result

    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        o = self.options
        self.words = backbone.words
        self.learner = PromptEnsemble(
            TextTower(backbone.model),
            backbone.tokenizer,
            n_prompts=o.n_prompts,
            n_ctx=o.n_ctx,
            positions=proda_positions(o.n_prompts, o.layout),
            init=resolve_phrase(backbone, o.init),
            generator=generator,
        )
        self.logit_scale = backbone.logit_scale
        self._means = {}
        self._queue = []
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        self._prompt_generator = torch.Generator().manual_seed(seed)

    def prompt_features(
        self, classnames: Sequence[str], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(K', C, d) normalised features of prompts ``index`` (None: all) x classes."""
        return F.normalize(self._check_fitted()(classnames, index).float(), dim=-1)

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, d) the mean classifier mu (renormalised with ``normalize_mean``)."""
        key = tuple(classnames)
        learner = self._check_fitted()
        if learner.training or key not in self._means:
            mean = self.prompt_features(classnames).mean(0)
            if self.options.normalize_mean:
                mean = F.normalize(mean, dim=-1)
            if learner.training:
                return mean
            self._means[key] = mean
        return self._means[key]

    def feature_logits(
        self, features: torch.Tensor, classnames: Sequence[str], tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.logit_scale * features.float() @ self.text_features(classnames).T

    def next_prompts(self) -> torch.Tensor | None:
        """The prompts of this step: None (all) or ``prompt_batch`` of a cycling permutation."""
        o = self.options
        if o.prompt_batch is None or o.prompt_batch == o.n_prompts:
            return None
        if len(self._queue) < o.prompt_batch:
            self._queue = torch.randperm(o.n_prompts, generator=self._prompt_generator).tolist()
        batch, self._queue = self._queue[: o.prompt_batch], self._queue[o.prompt_batch :]
        return torch.tensor(batch)

    def loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str],
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        o = self.options
        self._means = {}  # the prompts change: cached class means are stale
        text = self.prompt_features(classnames, self.next_prompts())
        logits = proda_logits(
            features.float(), text, labels, self.logit_scale, o.cov_ddof, o.normalize_mean
        )
        context = self._check_fitted().context_features()
        return F.cross_entropy(logits, labels) + o.weight * diversity_loss(context)
