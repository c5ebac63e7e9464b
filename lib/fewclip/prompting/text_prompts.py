"""Learnable text prompts fed through open_clip's frozen text transformer.

CoOp (Zhou et al., IJCV 2022) replaces the words of a hand-made prompt by learnable
vectors. For class ``c`` the prompt is the sequence of token embeddings

    P_c = [SOS, v_1, ..., v_M, w_c,1, ..., w_c,n, ".", EOT, pad...]     (L, w)

where ``v_1..v_M`` are the context vectors (shared by all classes, or one set per class:
"class-specific context"), ``w_c`` the embeddings of the class name and ``L`` the model's
context length (32 for fewclip's tiny models, 77 for OpenAI CLIP). The text feature is
open_clip's ``encode_text`` with the token embeddings substituted:

    g(P_c) = ln_final(Transformer(P_c + E_pos, causal mask))[eot_c] @ W_text      (d,)

:class:`TextTower` is that computation for any open_clip ``CLIP`` (or ``CustomTextCLIP``
with a plain ``TextTransformer``); it runs classes (and images x classes for CoCoOp-style
image-conditioned prompts) as one batch. With the causal mask, no position attends to a
later one, so the output at the EOT token does not depend on the padding after it: the
sequence is cut after the last EOT of the batch (``truncate=True``), which gives the
same features as the full length at a fraction of the cost (77 -> about 10 tokens).

:class:`ClassPrompts` holds the frozen parts of ``"{context} {class}."`` for one class
list (SOS embedding, the embeddings after the context, token ids); it depends only on
the class names, so it is built once per list and reused at every step. CoOp's class
token positions are reorderings of the same tokens (M context vectors, n_c name tokens):

    end:    [SOS, v_1..v_M, w_c, ".", EOT]
    middle: [SOS, v_1..v_{M//2}, w_c, v_{M//2+1}..v_M, ".", EOT]
    front:  [SOS, w_c, v_1..v_M, ".", EOT]

With an init phrase the official CoOp / CoCoOp count its *words* as the context length
(``n_ctx = len(ctx_init.split(" "))``): the first that many BPE tokens are learnable and
the rest of the phrase stays fixed (``count="words"``, the default; ``"tokens"`` makes
every token of the phrase learnable, which differs for phrases with multi-token words).
:class:`TextPromptLearner` owns the learnable context and can build prompts for any
class list, which is what base-to-new evaluation needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: CoOp's default number of context tokens when they are randomly initialised.
DEFAULT_N_CTX = 16
#: Placeholder word standing for one learnable context token (CoOp uses "X").
PLACEHOLDER = "X"


class TextTower:
    """A view of an open_clip model's frozen text encoder that accepts token embeddings.

    ``encode(embeddings (N, L, w), ids (N, L)) -> (N, d)`` reproduces
    ``model.encode_text(ids)`` when ``embeddings = token_embedding(ids)``.
    """

    def __init__(self, model: nn.Module) -> None:
        from open_clip.transformer import TextTransformer  # lazy: seconds at import time

        text = getattr(model, "text", None)
        if text is not None:
            if not isinstance(text, TextTransformer):
                raise NotImplementedError(
                    f"prompt learning needs open_clip's own text transformer; this model's "
                    f"text tower is {type(text).__name__} (e.g. a Hugging Face encoder)"
                )
            if text.cls_emb is not None:
                raise NotImplementedError(
                    "text towers with an appended CLS embedding (CoCa) are not supported"
                )
            tower, pool_type, eos_id = text, text.pool_type, getattr(text, "eos_id", None)
        else:
            tower, pool_type = model, model.text_pool_type
            eos_id = getattr(model, "text_eos_id", None)
        self.token_embedding: nn.Embedding = tower.token_embedding
        self.positional_embedding: torch.Tensor = tower.positional_embedding
        self.transformer: nn.Module = tower.transformer
        self.ln_final: nn.Module = tower.ln_final
        self.text_projection = tower.text_projection
        self.attn_mask: torch.Tensor | None = tower.attn_mask
        self.pool_type: str = pool_type
        self.eos_id: int | None = eos_id
        self.width: int = int(self.positional_embedding.shape[-1])
        self.context_length: int = int(self.positional_embedding.shape[0])

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    @property
    def device(self) -> torch.device:
        return self.positional_embedding.device

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, L, w) float32 token embeddings."""
        return self.token_embedding(ids.to(self.device)).float()

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N,) the position whose output is the sentence feature."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        raise NotImplementedError(f"text pooling {self.pool_type!r} is not supported")

    def truncated_length(self, ids: torch.Tensor) -> int:
        """The shortest length that gives the same features (see the module docstring)."""
        if not self.causal or self.pool_type not in ("argmax", "eos", "first"):
            return ids.shape[-1]
        return int(self.pool_index(ids.reshape(-1, ids.shape[-1])).max()) + 1

    def encode(
        self, embeddings: torch.Tensor, ids: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        """(N, L, w) token embeddings + (N, L) ids -> (N, d) un-normalised text features.

        Follows open_clip ``CLIP.encode_text``: add positional embeddings, run the
        transformer with the causal mask, ``ln_final``, pool at the EOT token, project.
        """
        length = self.truncated_length(ids) if truncate else embeddings.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast)
        x = x + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, ids[:, :length], self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x


#: Where the class name goes in a CoOp prompt (``CLASS_TOKEN_POSITION``).
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
#: How the context length of an init phrase is counted (official: words).
CONTEXT_COUNTS = ("words", "tokens")


def count_tokens(tokenizer, phrase: str) -> int:
    """Number of BPE tokens of ``phrase`` (without SOS/EOT), e.g. 4 for "a photo of a"."""
    ids = tokenizer([phrase])[0]
    return int(ids.argmax()) - 1


def count_words(phrase: str) -> int:
    """The official CoOp context length of an init phrase: ``len(phrase.split(" "))``."""
    return len(phrase.split(" "))


def position_order(name_lens: Sequence[int], n_ctx: int, length: int, position: str):
    """(C, L) gather index that turns ``[SOS, ctx, name, rest]`` into the layout of
    ``position`` (see the module docstring); ``name_lens`` (C,) BPE tokens per class name."""
    if position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(
            f"unknown class token position {position!r}; choose one of {CLASS_TOKEN_POSITIONS}"
        )
    rows = []
    for n in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        rest = list(range(1 + n_ctx + n, length))
        if position == "end":
            order = [0, *ctx, *name, *rest]
        elif position == "front":
            order = [0, *name, *ctx, *rest]
        else:
            half = n_ctx // 2
            order = [0, *ctx[:half], *name, *ctx[half:], *rest]
        rows.append(order)
    return torch.tensor(rows, dtype=torch.long)


@dataclass
class ClassPrompts:
    """Frozen parts of ``"{context} {class}."`` for one class list (built once per list).

    prefix: (C, 1, w) SOS embedding.  suffix: (C, L - 1 - M, w) embeddings after the M
    learnable context tokens (fixed context words, class name, ".", EOT, padding).
    ids: (C, L) token ids (their argmax is the EOT position).  names: the class names.
    order: (C, L) gather index of the class token position (None: "end", the identity).
    """

    prefix: torch.Tensor
    suffix: torch.Tensor
    ids: torch.Tensor
    names: tuple[str, ...]
    order: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.ids.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Context (M, w), (C, M, w) or (B, C, M, w) -> prompts (C, L, w) or (B, C, L, w)."""
        num_classes = self.num_classes
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(num_classes, -1, -1)
        if ctx.dim() == 3:
            out = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)
        else:
            batch = ctx.shape[0]
            prefix = self.prefix.unsqueeze(0).expand(batch, -1, -1, -1)
            suffix = self.suffix.unsqueeze(0).expand(batch, -1, -1, -1)
            out = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=2)
        if self.order is None:
            return out
        index = self.order.to(out.device)[..., None].expand(*out.shape[:-3], -1, -1, out.shape[-1])
        return torch.gather(out, -2, index.expand_as(out))


def build_class_prompts(
    tower: TextTower,
    tokenizer,
    classnames: Sequence[str],
    context_words: str,
    n_ctx: int,
    position: str = "end",
) -> ClassPrompts:
    """Tokenise ``"{context_words} {name}."`` per class; the first ``n_ctx`` tokens after SOS
    are the learnable positions (their embeddings here are replaced by the context).

    ``position``: where the class name goes. As in the official code, the name's tokens are
    the first ``len(tokenize(name))`` tokens after the context positions."""
    texts = [f"{context_words} {name}." for name in classnames]
    ids = tokenizer(texts).to(tower.device)
    head = tokenizer([context_words])[0].to(tower.device)
    if not torch.equal(ids[:, : n_ctx + 1], head[: n_ctx + 1].expand(len(texts), -1)):
        raise ValueError(
            f"the context {context_words!r} does not tokenise to the same leading tokens "
            "in every prompt; this tokenizer is not supported for prompt learning"
        )
    emb = tower.embed(ids)
    order = None
    if position != "end":
        lens = [count_tokens(tokenizer, name) for name in classnames]
        order = position_order(lens, n_ctx, ids.shape[1], position).to(tower.device)
    return ClassPrompts(
        prefix=emb[:, :1],
        suffix=emb[:, 1 + n_ctx :],
        ids=ids,
        names=tuple(classnames),
        order=order,
    )


class TextPromptLearner(nn.Module):
    """CoOp context vectors: ``ctx`` (M, w) unified or (C, M, w) class-specific.

    init:  None -> M = ``n_ctx`` (default 16) vectors drawn from N(0, 0.02) (CoOp's random
           init); a phrase such as "a photo of a" -> initialised from its token embeddings
           (underscores read as spaces, as in the official code).
    n_ctx: with a phrase, how many of its leading tokens are learnable (None: counted by
           ``count``; APEX: 2, so "of a" stays fixed).
    count: "words" (official CoOp / CoCoOp: M = number of space-separated words, the rest
           of the phrase's tokens stay fixed) or "tokens" (M = its BPE token count).
    class_specific: one context per training class (CoOp's CSC); such a learner can only
           encode the class list it was built for. With a phrase, each class gets a copy
           (the official CoOp ignores CSC then: :class:`fewclip.methods.coop.CoOp` decides).
    position: class token position "end" (default), "middle" or "front" (CoOp).
    """

    def __init__(
        self,
        tower: TextTower,
        tokenizer,
        init: str | None = None,
        n_ctx: int | None = None,
        class_specific: bool = False,
        classnames: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        count: str = "words",
        position: str = "end",
    ) -> None:
        super().__init__()
        self.tower = tower
        self.tokenizer = tokenizer
        if count not in CONTEXT_COUNTS:
            raise ValueError(f"unknown context count {count!r}; choose one of {CONTEXT_COUNTS}")
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"unknown class token position {position!r}; choose one of {CLASS_TOKEN_POSITIONS}"
            )
        self.position = position
        if init:
            init = init.replace("_", " ")
            total = count_tokens(tokenizer, init)
            if n_ctx is None:
                n_ctx = count_words(init) if count == "words" else total
            if not 0 < n_ctx <= total:
                raise ValueError(f"n_ctx={n_ctx} must be in [1, {total}] for init {init!r}")
            self.context_words = init
            ids = tokenizer([init]).to(tower.device)
            vectors = tower.embed(ids)[0, 1 : 1 + n_ctx].cpu()
        else:
            n_ctx = DEFAULT_N_CTX if n_ctx is None else n_ctx
            self.context_words = " ".join([PLACEHOLDER] * n_ctx)
            vectors = torch.randn(n_ctx, tower.width, generator=generator) * 0.02
        self.n_ctx = n_ctx
        #: cut prompts after the last EOT (exact; see the module docstring)
        self.truncate = True
        self.class_specific = class_specific
        self.trained_classnames: tuple[str, ...] | None = None
        if class_specific:
            if not classnames:
                raise ValueError("class-specific context needs the training class names")
            self.trained_classnames = tuple(classnames)
            if init:
                vectors = vectors.unsqueeze(0).repeat(len(classnames), 1, 1)
            else:
                shape = (len(classnames), n_ctx, tower.width)
                vectors = torch.randn(*shape, generator=generator) * 0.02
        self.ctx = nn.Parameter(vectors.to(tower.device))
        self._prompts: dict[tuple[str, ...], ClassPrompts] = {}

    def class_prompts(self, classnames: Sequence[str]) -> ClassPrompts:
        """The frozen prompt parts for a class list (cached by the list)."""
        key = tuple(classnames)
        if self.class_specific and key != self.trained_classnames:
            raise ValueError(
                "class-specific context is tied to its training classes; it cannot encode "
                "a different class list (use unified context for base-to-new)"
            )
        if key not in self._prompts:
            self._prompts[key] = build_class_prompts(
                self.tower, self.tokenizer, key, self.context_words, self.n_ctx, self.position
            )
        return self._prompts[key]

    def forward(
        self,
        classnames: Sequence[str],
        bias: torch.Tensor | None = None,
        truncate: bool | None = None,
    ) -> torch.Tensor:
        """Text features of every class, un-normalised.

        bias: None -> (C, d); (B, w) one bias per image added to every context token of
        every class (CoCoOp) -> (B, C, d); (B, C, w) one bias per image and class (TOMM's
        CTP) -> (B, C, d). All B x C prompts go through the text encoder as one batch.
        ``truncate`` None: the learner's ``truncate`` attribute.
        """
        truncate = self.truncate if truncate is None else truncate
        prompts = self.class_prompts(classnames)
        ctx = self.ctx
        if bias is not None:
            if bias.dim() == 2:
                bias = bias.unsqueeze(1)  # (B, 1, w): same for every class
            ctx = ctx.unsqueeze(0) + bias.unsqueeze(-2)  # (B, C or 1, M, w)
            ctx = ctx.expand(-1, prompts.num_classes, -1, -1)
        embeddings = prompts.assemble(ctx)
        if embeddings.dim() == 3:
            return self.tower.encode(embeddings, prompts.ids, truncate=truncate)
        batch, num_classes = embeddings.shape[:2]
        flat = embeddings.reshape(batch * num_classes, *embeddings.shape[2:])
        ids = prompts.ids.repeat(batch, 1)
        return self.tower.encode(flat, ids, truncate=truncate).reshape(batch, num_classes, -1)

    def extra_repr(self) -> str:
        kind = "class-specific" if self.class_specific else "unified"
        return (
            f"n_ctx={self.n_ctx}, {kind}, context={self.context_words!r}, "
            f"class token {self.position}"
        )
