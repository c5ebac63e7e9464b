"""A collection of K learnable prompts (ProDA's prompt ensemble) through the frozen text encoder.

Prompt k has its own M context vectors ``ctx[k]`` (K, M, w) and its own class token
position (CoOp's layouts, :mod:`.text_prompts`): for class c

    end:    [SOS, v_k1..v_kM, w_c, ".", EOT]
    middle: [SOS, v_k1..v_k(M/2), w_c, v_k(M/2+1)..v_kM, ".", EOT]
    front:  [SOS, w_c, v_k1..v_kM, ".", EOT]

so one class gets K descriptions, t_kc = g(P_k(c)) (K, C, d). ProDA's layout
(:func:`proda_positions`) puts the class token in front for the first K/4 prompts, in the
middle for the next K/4 and at the end for the other half. The K x C prompts of a class list
run through the text encoder as one batch per position; the frozen parts (SOS, name, ".",
EOT) come from :func:`.text_prompts.build_class_prompts`, built once per class list.

``context_features`` encodes each prompt without a class name ("[SOS] v_k1..v_kM . [EOT]"),
the input of ProDA's diversity term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .text_prompts import (
    CLASS_TOKEN_POSITIONS,
    PLACEHOLDER,
    ClassPrompts,
    TextTower,
    build_class_prompts,
    count_tokens,
    count_words,
)

#: Layout names: ProDA's mixture, or one class token position for every prompt.
LAYOUTS = ("proda", *CLASS_TOKEN_POSITIONS)


def proda_positions(n_prompts: int, layout: str = "proda") -> tuple[str, ...]:
    """Class token position per prompt: "proda" -> K/4 front, K/4 middle, the rest end
    (one prompt: end); a position name -> that position for all K."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; choose one of {LAYOUTS}")
    if layout != "proda":
        return (layout,) * n_prompts
    if n_prompts == 1:
        return ("end",)
    quarter = n_prompts // 4
    return ("front",) * quarter + ("middle",) * quarter + ("end",) * (n_prompts - 2 * quarter)


class PromptEnsemble(nn.Module):
    """K prompts, ``ctx`` (K, M, w), each with a class token position.

    init: None -> N(0, 0.02) vectors (M = ``n_ctx``); a phrase -> every prompt starts from its
    token embeddings (M = its words, as CoOp's learner counts them).
    """

    def __init__(
        self,
        tower: TextTower,
        tokenizer,
        n_prompts: int = 32,
        n_ctx: int = 16,
        positions: Sequence[str] | None = None,
        init: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        positions = tuple(positions or proda_positions(n_prompts))
        if len(positions) != n_prompts or set(positions) - set(CLASS_TOKEN_POSITIONS):
            raise ValueError(
                f"positions must give one of {CLASS_TOKEN_POSITIONS} for each of the "
                f"{n_prompts} prompts"
            )
        self.tower = tower
        self.tokenizer = tokenizer
        self.positions = positions
        if init:
            init = init.replace("_", " ")
            n_ctx = count_words(init)
            if n_ctx > count_tokens(tokenizer, init):
                raise ValueError(f"init phrase {init!r} has more words than tokens")
            self.context_words = init
            ids = tokenizer([init]).to(tower.device)
            vectors = tower.embed(ids)[0, 1 : 1 + n_ctx].cpu().expand(n_prompts, -1, -1).clone()
        else:
            self.context_words = " ".join([PLACEHOLDER] * n_ctx)
            vectors = torch.randn(n_prompts, n_ctx, tower.width, generator=generator) * 0.02
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(vectors.to(tower.device))
        self._prompts: dict[tuple, ClassPrompts] = {}

    @property
    def n_prompts(self) -> int:
        return self.ctx.shape[0]

    def class_prompts(self, classnames: Sequence[str], position: str) -> ClassPrompts:
        key = (tuple(classnames), position)
        if key not in self._prompts:
            self._prompts[key] = build_class_prompts(
                self.tower, self.tokenizer, key[0], self.context_words, self.n_ctx, position
            )
        return self._prompts[key]

    def forward(self, classnames: Sequence[str], index: torch.Tensor | None = None) -> torch.Tensor:
        """(K', C, d) un-normalised features of prompts ``index`` (None: all K) x classes."""
        index = torch.arange(self.n_prompts) if index is None else index.cpu()
        out = None
        for position in CLASS_TOKEN_POSITIONS:
            rows = [i for i, k in enumerate(index.tolist()) if self.positions[k] == position]
            if not rows:
                continue
            prompts = self.class_prompts(classnames, position)
            ctx = self.ctx[index[rows].to(self.ctx.device)]  # (K_p, M, w)
            ctx = ctx.unsqueeze(1).expand(-1, prompts.num_classes, -1, -1)
            embeddings = prompts.assemble(ctx)  # (K_p, C, L, w)
            k, c = embeddings.shape[:2]
            flat = embeddings.reshape(k * c, *embeddings.shape[2:])
            features = self.tower.encode(flat, prompts.ids.repeat(k, 1)).reshape(k, c, -1)
            if out is None:
                out = features.new_zeros(len(index), c, features.shape[-1])
            out[torch.tensor(rows, device=out.device)] = features
        return out

    def context_features(self) -> torch.Tensor:
        """(K, d) un-normalised features of the context-only prompts "[SOS] ctx_k . [EOT]"."""
        prompts = self.class_prompts([""], "end")
        embeddings = prompts.assemble(self.ctx.unsqueeze(1))[:, 0]  # (K, L, w)
        return self.tower.encode(embeddings, prompts.ids.expand(self.n_prompts, -1))

    def extra_repr(self) -> str:
        counts = {p: self.positions.count(p) for p in CLASS_TOKEN_POSITIONS}
        return f"K={self.n_prompts}, n_ctx={self.n_ctx}, positions={counts}"
