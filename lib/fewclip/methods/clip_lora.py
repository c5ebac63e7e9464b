"""CLIP-LoRA: Low-Rank Few-Shot Adaptation of Vision-Language Models (Zanella, Ben Ayed;
CVPRW 2024, arXiv 2405.18541). Official code: MaxZanella/CLIP-LoRA.

Low-rank updates of the q, k, v projections of every attention layer of both encoders
(:mod:`fewclip.prompting.lora`: rank r = 2, alpha = 1, scaling alpha / sqrt(r), dropout
0.25 on the update's input, B = 0 at init), trained with the class prompts of one
hand-crafted template:

    t_c    = norm(g_LoRA(template(c)))                 (C, d)
    z      = norm(f_LoRA(x))                           (B, d)
    loss   = CE(s * z @ t^T, y)

At initialisation the updates are zero, so the model is zero-shot CLIP with that template.

Official settings (``main.py``, one configuration for every dataset, shot count and, here,
protocol: the paper's point): AdamW lr 2e-4, weight decay 1e-2, betas (0.9, 0.999),
500 x K iterations (K shots), cosine annealing per iteration to 1e-6, batch 32 (the last
partial batch kept), Dassl-style crop (0.08-1) + flip, fp16 autocast on GPU, no
validation: the last iteration's model is kept (``selection="last"``; ``"val"`` validates
after every pass over the training set and keeps the best). ``iterations`` overrides the
500 x K. The template is "a photo of a {}." for every dataset (the official dataset files
keep their CoOp templates commented out, ImageNet its ensemble): the backbone's own class template
(``template=None``, :class:`fewclip.backbones.PromptWords`), which is that one for OpenAI
CLIP; the option ``template`` sets another.

Every protocol uses that one configuration: the adapted encoders classify any class list
by its prompts, so base-to-new and cross-dataset evaluation need nothing more. On a ResNet
image tower only ``encoder="text"`` runs (the official code adapts ViT attention only).

Differences from the official code: the logit scale is the model's own (OpenAI CLIP:
100, the official constant; ``logit_scale=100`` sets it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..data.base import Datum
from ..prompting.encoder_base import (
    EncoderMethod,
    Images,
    TrainOptions,
    batch_loader,
    image_batches,
    top1,
)
from ..prompting.lora import LoRA
from ..prompting.reencoding import load_val
from ..prompting.training import Stepper, augmentation_seed, build_optimizer, epoch_batches
from .base import FitResult, register_method

SELECTIONS = ("last", "val")


@register_method
class CLIPLoRA(EncoderMethod):
    """Low-rank updates of the attention of both frozen encoders."""

    name = "clip_lora"
    #: the official setting: fixed iterations, the last model (``RunConfig(val="none")``)
    no_val_options: ClassVar[dict] = {"selection": "last"}

    @dataclass
    class Options(TrainOptions):
        optimizer: str = "adamw"
        lr: float = 2e-4
        weight_decay: float = 1e-2
        batch_size: int = 32
        n_iters: int = 500  # per shot: 500 x K iterations
        iterations: int | None = None  # total iterations (None: n_iters x K)
        eta_min: float = 1e-6
        selection: str = "last"  # official: no validation, the last model
        encoder: str = "both"  # "text" / "vision" / "both"
        position: str = "all"  # which layers (the official --position)
        params: tuple[str, ...] = ("q", "k", "v")
        rank: int = 2
        alpha: float = 1.0
        dropout: float = 0.25
        template: str | None = None  # None: the backbone's class template ("a photo of a {}.")
        protocol: str | None = None  # the run's protocol (one configuration for all)
        augment: bool = True
        logit_scale: float | None = None  # None: the model's own s (official: 100)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.selection not in SELECTIONS:
            raise ValueError(
                f"clip_lora: unknown selection {self.options.selection!r}; choose one of "
                f"{SELECTIONS}"
            )
        self.options.params = tuple(self.options.params)

    def scale(self, backbone: Backbone) -> float:
        """s: the option ``logit_scale``, else the model's own."""
        given = self.options.logit_scale
        return backbone.logit_scale if given is None else float(given)

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the template comes from the backbone (the run key then includes it)."""
        return self.options.template is None

    def template_for(self, backbone: Backbone) -> str:
        """The option ``template``, else the backbone's own class template (OpenAI CLIP's
        "a photo of a {}.", the official one, unless its checkpoint declares another)."""
        if self.options.template is not None:
            return self.options.template
        return backbone.words.template

    def prepare(self, backbone: Backbone, classnames: Sequence[str], seed: int = 0) -> None:
        """Build the LoRA modules at their initial state (zero updates)."""
        o = self.options
        self.train_classnames = tuple(classnames)
        self.template = self.template_for(backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.learner = LoRA(
                backbone.model, o.encoder, o.position, o.params, o.rank, o.alpha, o.dropout
            )

    def text_features(self, backbone: Backbone, classnames: Sequence[str]) -> torch.Tensor:
        """(C, d) normalised features of the template's prompts (LoRA applied by the caller)."""
        ids = backbone.tokenizer([self.template.format(c) for c in classnames]).to(backbone.device)
        return F.normalize(backbone.model.encode_text(ids).float(), dim=-1)

    @torch.no_grad()
    def logits(self, backbone: Backbone, images: Images, classnames: Sequence[str]) -> torch.Tensor:
        learner = self._check_fitted()
        learner.eval()
        out = []
        with learner.applied(backbone.model):
            with backbone.autocast():
                t = self.text_features(backbone, classnames)
            for batch in image_batches(backbone, images):
                with backbone.autocast():
                    z = backbone.model.encode_image(batch.to(backbone.device))
                out.append(self.scale(backbone) * F.normalize(z.float(), dim=-1) @ t.T)
        return torch.cat(out)

    def fit(
        self,
        backbone: Backbone,
        train_items: Sequence[Datum],
        val_items: Sequence[Datum],
        classnames: Sequence[str],
        seed: int = 0,
        *,
        progress: bool = False,
        num_workers: int = 0,
    ) -> FitResult:
        o = self.options
        classnames = tuple(classnames)
        shots = max(1, round(len(train_items) / max(1, len(classnames))))
        total = o.iterations if o.iterations is not None else o.n_iters * shots
        self.prepare(backbone, classnames, seed)
        learner = self._check_fitted()
        optimizer = build_optimizer(learner.parameters(), o.optimizer, o.lr, o.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=o.eta_min)
        step = Stepper(optimizer, backbone.device, backbone.precision)
        generator = torch.Generator().manual_seed(seed)
        train_text = o.encoder in ("text", "both")
        train_image = o.encoder in ("vision", "both")
        result = FitResult()
        val_images, val_labels = load_val(backbone, val_items)
        has_val = val_labels.numel() > 0  # none under RunConfig(val="none")
        best_acc, best_state = -1.0, None
        count, epoch = 0, 0
        used: set[int] = set()
        cuda = [backbone.device] if backbone.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the dropout masks, seeded
            torch.manual_seed(seed)
            if not train_text:
                with torch.no_grad(), backbone.autocast():
                    fixed_text = self.text_features(backbone, classnames)
            while count < total:
                learner.train()
                batches = epoch_batches(len(train_items), o.batch_size, generator, drop_last=False)
                loader = batch_loader(
                    backbone,
                    train_items,
                    batches,
                    augmentation_seed(seed, epoch) if o.augment else None,
                    num_workers=num_workers,
                    scale=self.crop_scale(backbone),
                )
                losses = []
                for images, labels, index, ok in loader:
                    used.update(index[ok].tolist())
                    images = images[ok].to(backbone.device)
                    with learner.applied(backbone.model), backbone.autocast():
                        t = self.text_features(backbone, classnames) if train_text else fixed_text
                        with torch.set_grad_enabled(train_image):
                            z = F.normalize(backbone.model.encode_image(images).float(), dim=-1)
                        logits = self.scale(backbone) * z @ t.T
                        loss = F.cross_entropy(logits, labels[ok].to(backbone.device))
                    losses.append(step(loss))
                    scheduler.step()
                    count += 1
                    if count == total:
                        break
                row = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses))}
                row["lr"] = scheduler.get_last_lr()[0]
                if o.selection == "val" and has_val:
                    logits = self.logits(backbone, val_images, classnames)
                    row["val_acc"] = top1(logits, val_labels)
                    if row["val_acc"] >= best_acc:
                        best_acc, result.best_epoch = row["val_acc"], epoch
                        best_state = {k: v.clone() for k, v in learner.state_dict().items()}
                result.history.append(row)
                epoch += 1
        if best_state is not None:
            learner.load_state_dict(best_state)
        else:
            result.best_epoch = epoch - 1
        learner.eval()
        if o.selection == "last" and has_val:  # the kept model's val accuracy, for the record
            best_acc = top1(self.logits(backbone, val_images, classnames), val_labels)
        result.best_val_acc = best_acc if has_val else None
        result.train_images = len(used)
        result.chosen.update(
            {
                "selection": o.selection,
                "iterations": total,
                "epochs": epoch,
                "template": self.template,
                "encoder": o.encoder,
            }
        )
        return result
