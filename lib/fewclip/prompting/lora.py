"""Low-rank updates of the attention projections of frozen open_clip transformers (LoRA,
as CLIP-LoRA applies it: Zanella and Ben Ayed, CVPRW 2024; official code MaxZanella/CLIP-LoRA).

For each adapted projection W (E, E) of a block's ``nn.MultiheadAttention`` (q, k, v from
``in_proj_weight``; o the ``out_proj``), two matrices A (r, E) and B (E, r) give

    h = x W^T + b + s * drop(x) A^T B^T,      s = alpha / sqrt(r)   (the official scaling)

A is drawn as ``nn.Linear`` weights are (Kaiming uniform, a = sqrt 5) and B = 0, so at
initialisation every update is exactly zero and the encoders are the frozen ones. In
training (``module.train()``) with dropout, the update runs beside the frozen projection
on the dropped-out input, then scaled dot-product attention as in the official
``PlainMultiheadAttentionLoRA``; otherwise (evaluation, or no dropout) the update is merged
into the weights, W + s B A, and the block's own attention runs with them (the official
``LinearLoRA`` merges in eval mode the same way), so a zero update gives the frozen
encoder's output bit for bit.

The backbone is never modified: :meth:`LoRA.applied` swaps the adapted blocks' attention
for the duration of a ``with`` block and restores it. Shapes: L tokens, N sequences, E width.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

#: Which projections may be adapted (the official ``--params``).
TARGETS = ("q", "k", "v", "o")
#: Which encoders (the official ``--encoder``).
ENCODERS = ("text", "vision", "both")
#: Which layers (the official ``--position``), as functions of the number of layers L.
POSITIONS = {
    "all": lambda n: list(range(n)),
    "bottom": lambda n: list(range(min(4, n))),
    "mid": lambda n: list(range(4, min(8, n))),
    "up": lambda n: list(range(8, min(12, n))),
    "half-up": lambda n: list(range(n // 2, n)),
    "half-bottom": lambda n: list(range(n // 2)),
    "top3": lambda n: list(range(max(0, n - 3), n)),
}


class LoRAError(TypeError):
    """The encoder has no attention that LoRA can adapt here."""


class AttentionLoRA(nn.Module):
    """A (r, E) and B (E, r) for each adapted projection of one attention layer."""

    def __init__(
        self,
        width: int,
        targets: Sequence[str] = ("q", "k", "v"),
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        unknown = set(targets) - set(TARGETS)
        if unknown or not targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {TARGETS}, got {targets}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.targets = tuple(targets)
        self.scaling = alpha / math.sqrt(rank)
        self.dropout = dropout
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for t in self.targets:
            a = torch.empty(rank, width, device=device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A[t] = nn.Parameter(a)
            self.B[t] = nn.Parameter(torch.zeros(width, rank, device=device))

    def delta(self, target: str) -> torch.Tensor:
        """(E, E) s * B A of one projection (zeros if it is not adapted)."""
        return self.scaling * (self.B[target] @ self.A[target])

    def update(self, target: str, x: torch.Tensor) -> torch.Tensor:
        """s * drop(x) A^T B^T for (..., E) inputs (dropout only in training mode)."""
        x = F.dropout(x, self.dropout, self.training)
        return self.scaling * F.linear(
            F.linear(x, self.A[target].to(x.dtype)), self.B[target].to(x.dtype)
        )

    def merged_weights(self, mha: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
        """The attention's weights with the updates added (W + s B A)."""
        width = mha.embed_dim
        zeros = mha.in_proj_weight.new_zeros(width, width)
        in_delta = torch.cat([self.delta(t) if t in self.targets else zeros for t in "qkv"])
        out = {"in_proj_weight": mha.in_proj_weight + in_delta.to(mha.in_proj_weight.dtype)}
        if "o" in self.targets:
            w = mha.out_proj.weight
            out["out_proj.weight"] = w + self.delta("o").to(w.dtype)
        return out

    def attend(
        self, mha: nn.MultiheadAttention, x: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Self-attention of x with unmerged updates (the training path with dropout)."""
        if mha.batch_first:
            x = x.transpose(0, 1)  # (L, N, E)
        length, batch, width = x.shape
        heads = mha.num_heads
        weights = mha.in_proj_weight.to(x.dtype).chunk(3)
        biases = (
            mha.in_proj_bias.to(x.dtype).chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        )
        qkv = []
        for target, w, b in zip("qkv", weights, biases, strict=True):
            h = F.linear(x, w, b)
            if target in self.targets:
                h = h + self.update(target, x)
            qkv.append(h.reshape(length, batch, heads, width // heads).permute(1, 2, 0, 3))
        if attn_mask is not None:
            attn_mask = attn_mask.to(x.dtype)
        o = F.scaled_dot_product_attention(*qkv, attn_mask=attn_mask)  # (N, H, L, E / H)
        o = o.permute(2, 0, 1, 3).reshape(length, batch, width)
        bias = None if mha.out_proj.bias is None else mha.out_proj.bias.to(x.dtype)
        out = F.linear(o, mha.out_proj.weight.to(x.dtype), bias)
        if "o" in self.targets:
            out = out + self.update("o", o)
        return out.transpose(0, 1) if mha.batch_first else out


class _AdaptedAttention(nn.Module):
    """Stands in for a block's ``nn.MultiheadAttention`` while LoRA is applied."""

    def __init__(self, mha: nn.MultiheadAttention, lora: AttentionLoRA) -> None:
        super().__init__()
        object.__setattr__(self, "mha", mha)  # not registered: the block keeps owning it
        object.__setattr__(self, "lora", lora)

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **kwargs):
        mha, lora = self.mha, self.lora
        if not (query is key and key is value) or need_weights:
            raise LoRAError("LoRA here adapts self-attention only (query = key = value)")
        if lora.training and lora.dropout > 0:
            return lora.attend(mha, query, attn_mask), None
        params = lora.merged_weights(mha)
        return functional_call(
            mha, params, (query, key, value), {"need_weights": False, "attn_mask": attn_mask}
        )


def transformer_blocks(model: nn.Module, encoder: str) -> list[nn.Module]:
    """The residual attention blocks of the text transformer or the image ViT."""
    from open_clip.transformer import TextTransformer, VisionTransformer

    if encoder == "text":
        text = getattr(model, "text", None)
        tower = text if isinstance(text, TextTransformer) else model
        return list(tower.transformer.resblocks)
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise LoRAError(
            f"LoRA on the image encoder needs a Vision Transformer (this backbone's is "
            f"{type(visual).__name__}); use a ViT backbone or the option encoder='text'."
        )
    return list(visual.transformer.resblocks)


class LoRA(nn.Module):
    """LoRA modules of the chosen layers of one or both encoders of an open_clip model."""

    def __init__(
        self,
        model: nn.Module,
        encoder: str = "both",
        position: str = "all",
        targets: Sequence[str] = ("q", "k", "v"),
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown LoRA encoder {encoder!r}; choose one of {ENCODERS}")
        if position not in POSITIONS:
            raise ValueError(
                f"unknown LoRA position {position!r}; choose one of {sorted(POSITIONS)}"
            )
        self.encoder = encoder
        self.layers: dict[str, list[int]] = {}
        self.adapters = nn.ModuleDict()
        sides = ("text", "vision") if encoder == "both" else (encoder,)
        for side in sides:
            blocks = transformer_blocks(model, side)
            chosen = POSITIONS[position](len(blocks))
            if not chosen:
                raise ValueError(f"LoRA position {position!r} selects no layer of {len(blocks)}")
            self.layers[side] = chosen
            for i in chosen:
                if not isinstance(blocks[i].attn, nn.MultiheadAttention):
                    raise LoRAError(
                        f"LoRA adapts torch's nn.MultiheadAttention; this {side} block's "
                        f"attention is {type(blocks[i].attn).__name__}"
                    )
            self.adapters[side] = nn.ModuleList(
                AttentionLoRA(
                    blocks[i].attn.embed_dim,
                    targets,
                    rank,
                    alpha,
                    dropout,
                    blocks[i].attn.in_proj_weight.device,
                )
                for i in chosen
            )

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block, ``model``'s adapted blocks attend with the low-rank updates."""
        swapped = []
        try:
            for side, indices in self.layers.items():
                blocks = transformer_blocks(model, side)
                for i, lora in zip(indices, self.adapters[side], strict=True):
                    mha = blocks[i].attn
                    blocks[i].attn = _AdaptedAttention(mha, lora)
                    swapped.append((blocks[i], mha))
            yield
        finally:
            for block, mha in swapped:
                block.attn = mha
