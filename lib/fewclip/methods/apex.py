"""APEX: text Adapter, visual Prompts and adaptive Ensemble for cross-modality transfer
(Yang, Ko, Yun; EMNLP 2024; arXiv 2311.15569, "Towards Difficulty-Agnostic Efficient
Transfer Learning for Vision-Language Models").

Model (trained end to end with the encoders frozen):

    z      = ViT with deep prompts P (J layers x 2 tokens, N(0, 0.02))      (B, d)
    u_c    = g([SOS, v_1, v_2, "of", "a", w_c, ".", EOT])                   (C, d)
             the first 2 words of the init phrase are learnable (v_1, v_2): the
             backbone's own words (``text_init="backbone"``), "a photo of a" for OpenAI
             CLIP (the official phrase), "an emoji of" for fewclip's tiny emoji models;
             ``text_init="official"``: "a photo of a" whatever the backbone
    t~_c   = A^T u_c + b               A (d, d) init identity, b (d,) init 0
    loss   = CE(s * norm(z) @ norm(t~)^T, y)          s: the model's own logit scale

Adaptive ensemble at inference (no training). With t'_j the frozen-CLIP text feature of
"{init} {class j}." ("a photo of a {class j}." officially) for the C training classes and
t'_e that of an evaluation class:

    d_avg(e) = 1 - mean_j cos(t'_e, t'_j)
    d_nn(e)  = 1 - max_j  cos(t'_e, t'_j)
    a_e      = exp(-beta * d_avg(e) * [d_nn(e) > epsilon])        beta = 4, epsilon = 0.05 *
    t_e      = a_e * (A^T u_e + b) + (1 - a_e) * u_e              blend, then normalise
    z        = mean_e(a_e) * z_prompted + (1 - mean_e(a_e)) * z_frozen
    logits   = s * norm(z) @ norm(t)^T

A training class has d_nn = 0, so a = 1 and the adapted, prompted model is used as
trained; a class far from every training class falls back towards the learned prompt
without adapter and the prompt-free image encoder.

* epsilon relative to the backbone (``epsilon="backbone"``, the default): 0.05 is a distance
in OpenAI CLIP's text space; on a backbone that speaks OpenAI's words (OpenAI and open_clip
weights, any checkpoint that declares no words of its own) it stays 0.05; on a backbone
with its own words it is the ``EPSILON_QUANTILE`` (10%) quantile of the training classes'
distances to their nearest other training class, d_nn of each training class among the
others (computed from the training class names only). ``epsilon=0.05`` is the official
constant on every backbone. Why 10%, and what it changes: ``docs/constants.md``.

Fixes relative to the official code: ``z_frozen`` comes from the untouched backbone (the
official frozen copy is built with the prompt design and so carries randomly initialised
visual prompts), and the frozen text features and a_e are computed once per class list,
not at every forward pass. Epochs are selected on the few-shot val split
(``selection="last"``: the official behaviour, last epoch).

Training (official config vit_b16_c2_ep15_batch16_2+2ctx): Adadelta lr 0.15, weight decay
1e-3, cosine per epoch, 1 linear warm-up epoch (0.01 in epoch 0), batch 16, 15 epochs (5
for ImageNet: pass ``epochs=5``), prompts at every layer, Dassl's random resized crop +
flip, mixed precision on GPU. ``optimizer="sgd"``: lr 0.0015, 30 epochs, CoOp's constant
warm-up (1e-5; the warm-up of this variant is our choice).

Under the ``cross_dataset`` and ``domain_generalisation`` protocols (the option
``protocol``, filled in by the run layer) the defaults are the official ``cross_eval``
config instead: Adadelta lr 0.02, 6 epochs, batch 32, linear warm-up from 1e-3, prompt
depth J = 3 (at most the ViT's layers) and no training augmentation (``augment=False``:
the test transform; Dassl's plain resize to 224 x 224 is the same for square images).
Every explicitly given option wins over these defaults; :meth:`APEX.resolved` shows what
a run uses.

The ensemble changes neither training nor validation, so one trained model serves every
ensemble setting: with ``variants=True``, :meth:`APEX.evaluate` also scores each
``ensemble`` mode (adaptive a_e) and each fixed weight in ``variant_alphas`` (ensemble
"both") on the same test images and keeps them in ``last_variants`` (the run layer stores
them in the record, ``metrics[...]["variants"]``).

Ablations: ``ensemble`` "both" / "text" / "visual" / "none"; ``alpha`` a fixed weight
instead of exp(-beta d_avg) for the classes beyond ``epsilon`` of every training class
(training classes keep a_e = 1, so training, validation and epoch selection always use
the adapted model as trained: the ensemble is an inference device for new classes);
``beta``; ``depth`` J (None: every layer, 12 for ViT-B/16; 3 for the
cross-dataset and domain-generalisation protocols).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import (
    BACKBONE_WORDS,
    OPENAI_WORDS,
    Backbone,
    PromptWords,
    init_phrase,
    phrase_template,
    words_note,
)
from ..data.base import Datum
from ..prompting.deep_prompts import DeepVisualPrompts, check_vit
from ..prompting.encoder_base import (
    EncoderMethod,
    Images,
    TrainOptions,
    batch_loader,
    image_batches,
)
from ..prompting.text_prompts import TextPromptLearner, TextTower
from ..prompting.training import (
    Stepper,
    augmentation_seed,
    build_optimizer,
    epoch_batches,
    epoch_scheduler,
    fit_loop,
)
from .base import FitResult, accuracy, register_method

ENSEMBLES = ("both", "text", "visual", "none")
#: The official epsilon (a cosine distance in OpenAI CLIP's text space).
OFFICIAL_EPSILON = 0.05
#: On a backbone with its own words: epsilon is this quantile of the training classes'
#: nearest-other-training-class cosine distances (docs/constants.md).
EPSILON_QUANTILE = 0.1

#: Defaults per optimiser: (lr, epochs, warm-up type, warm-up lr).
OPTIMIZER_DEFAULTS = {
    "adadelta": (0.15, 15, "linear", 1e-2),
    "sgd": (0.0015, 30, "constant", 1e-5),
}
#: The run protocols (:data:`fewclip.config.PROTOCOLS`).
PROTOCOLS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalisation")
#: Protocols that use the official ``cross_eval`` config.
CROSS_EVAL_PROTOCOLS = ("cross_dataset", "domain_generalisation")
#: configs/trainers/APEX/cross_eval.yaml (Adadelta): lr, epochs, warm-up type, warm-up lr.
CROSS_EVAL_OPTIMIZER = (0.02, 6, "linear", 1e-3)
#: cross_eval's batch size, prompt depth and training augmentation.
CROSS_EVAL = {"batch_size": 32, "depth": 3, "augment": False}
#: vit_b16_c2_ep15_batch16_2+2ctx (depth None: every layer).
BASE_CONFIG = {"batch_size": 16, "depth": None, "augment": True}


def ensemble_weights(
    train_text: torch.Tensor,
    eval_text: torch.Tensor,
    beta: float = 4.0,
    epsilon: float = 0.05,
    fixed: float | None = None,
) -> torch.Tensor:
    """a_e for every evaluation class.

    train_text (C, d), eval_text (E, d): frozen-CLIP text features (normalised here).
    Returns (E,) in (0, 1]: 1 for a class within ``epsilon`` (cosine distance) of a
    training class, else exp(-beta * mean cosine distance to the training classes), or
    ``fixed`` when given (the fixed-weight ablation: the ensemble still leaves the
    training classes, and so validation, to the adapted model as trained).
    """
    cos = F.normalize(eval_text.float(), dim=-1) @ F.normalize(train_text.float(), dim=-1).T
    d_avg = 1.0 - cos.mean(dim=1)
    far = (1.0 - cos.max(dim=1).values).clamp_min(0.0) > epsilon
    if fixed is not None:
        return torch.where(far, torch.full_like(d_avg, float(fixed)), torch.ones_like(d_avg))
    return torch.exp(-beta * d_avg * far.float())


def relative_epsilon(train_text: torch.Tensor, quantile: float = EPSILON_QUANTILE) -> float:
    """epsilon relative to the backbone: the ``quantile`` of the training classes' cosine
    distances to their nearest other training class. train_text (C, d) frozen text features;
    with a single training class there is no such distance and the official 0.05 is kept."""
    if train_text.shape[0] < 2:
        return OFFICIAL_EPSILON
    t = F.normalize(train_text.float(), dim=-1)
    cos = (t @ t.T).fill_diagonal_(float("-inf"))
    d_nn = (1.0 - cos.max(dim=1).values).clamp_min(0.0)
    return float(torch.quantile(d_nn, quantile))


def blend_logits(
    u: torch.Tensor,
    adapted: torch.Tensor,
    z_prompted: torch.Tensor,
    z_frozen: torch.Tensor,
    a: torch.Tensor,
    mode: str,
    scale: float,
) -> torch.Tensor:
    """The ensemble of the module docstring from its pieces: u, adapted (E, d) text features
    without / with the adapter, z_prompted, z_frozen (B, d) image features, a (E,) weights,
    ``mode`` which sides blend. Returns (B, E) logits."""
    text = adapted
    if mode in ("both", "text"):
        text = a[:, None] * adapted + (1 - a[:, None]) * u
    z = z_prompted
    if mode in ("both", "visual"):
        w = float(a.mean())
        z = w * z_prompted + (1.0 - w) * z_frozen
    return scale * F.normalize(z, dim=-1) @ F.normalize(text, dim=-1).T


class APEXLearner(nn.Module):
    """Every learnable parameter of APEX: visual prompts, text context, text adapter."""

    def __init__(
        self,
        backbone: Backbone,
        depth: int | None,
        length: int,
        init: str,
        n_ctx: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.visual = DeepVisualPrompts(backbone.model.visual, depth, length, generator)
        self.text = TextPromptLearner(
            TextTower(backbone.model), backbone.tokenizer, init=init, n_ctx=n_ctx
        )
        d = backbone.embed_dim
        self.adapter_weight = nn.Parameter(torch.eye(d, device=backbone.device))  # A
        self.adapter_bias = nn.Parameter(torch.zeros(d, device=backbone.device))  # b

    def adapt(self, u: torch.Tensor) -> torch.Tensor:
        """(C, d) -> (C, d): t~ = A^T u + b (row vectors: u @ A + b)."""
        return u @ self.adapter_weight.to(u.dtype) + self.adapter_bias.to(u.dtype)


@register_method
class APEX(EncoderMethod):
    """Deep visual prompts + shallow text prompt + linear text adapter + adaptive ensemble."""

    name = "apex"

    @dataclass
    class Options(TrainOptions):
        optimizer: str = "adadelta"
        lr: float | None = None  # None: 0.15 (adadelta) / 0.0015 (sgd); cross_eval 0.02
        epochs: int | None = None  # None: 15 (adadelta) / 30 (sgd); cross_eval 6
        batch_size: int | None = None  # None: 16; cross_eval 32
        weight_decay: float = 1e-3
        warmup_type: str | None = None  # None: "linear" (adadelta) / "constant" (sgd)
        warmup_lr: float | None = None  # None: 1e-2 (adadelta) / 1e-5 (sgd); cross_eval 1e-3
        depth: int | None = None  # J; None: every layer of the ViT; cross_eval 3
        augment: bool | None = None  # training crop + flip; None: True; cross_eval False
        protocol: str | None = None  # the run's protocol (set by the run layer)
        vision_length: int = 2
        text_init: str = BACKBONE_WORDS  # "backbone", "official" or a phrase
        text_n_ctx: int = 2
        ensemble: str = "both"
        alpha: float | None = None  # fixed ensemble weight instead of the adaptive a_e
        variants: bool = False  # also score every ensemble mode and variant_alphas
        variant_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
        beta: float = 4.0
        epsilon: float | str = BACKBONE_WORDS  # "backbone" (module docstring) or a distance

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if o.ensemble not in ENSEMBLES:
            raise ValueError(f"apex: unknown ensemble {o.ensemble!r}; choose one of {ENSEMBLES}")
        if o.optimizer not in OPTIMIZER_DEFAULTS and o.lr is None:
            raise ValueError(f"apex: give lr for optimizer {o.optimizer!r}")
        if o.protocol not in (None, *PROTOCOLS):
            raise ValueError(f"apex: unknown protocol {o.protocol!r}; choose one of {PROTOCOLS}")
        self._alpha: dict[tuple[str, ...], torch.Tensor] = {}
        self._near: dict[tuple[str, ...], torch.Tensor] = {}
        self.frozen_train_text: torch.Tensor | None = None
        self.words = OPENAI_WORDS  # the backbone's, set by prepare()
        #: epsilon as used (the option resolved for the backbone by prepare())
        self.epsilon = o.epsilon if isinstance(o.epsilon, (int, float)) else OFFICIAL_EPSILON
        if not isinstance(o.epsilon, (int, float)) and o.epsilon != BACKBONE_WORDS:
            raise ValueError(f"apex: epsilon must be a distance or 'backbone', not {o.epsilon!r}")
        #: variant name -> (N, C) logits of the last :meth:`evaluate` (``variants=True``)
        self.last_variants: dict[str, torch.Tensor] | None = None

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the init phrase comes from the backbone (the run key then includes it)."""
        o = self.options
        return o.text_init == BACKBONE_WORDS or o.epsilon == BACKBONE_WORDS

    @property
    def config_name(self) -> str:
        """The official config whose defaults apply: "cross_eval" or "base"."""
        return "cross_eval" if self.options.protocol in CROSS_EVAL_PROTOCOLS else "base"

    def resolved(self) -> dict:
        """The effective settings: given options, else the defaults of the optimiser and of
        the official config for the protocol (``cross_eval`` for cross-dataset and domain
        generalisation, see the module docstring)."""
        o = self.options
        cross = self.config_name == "cross_eval"
        lr, epochs, wtype, wlr = OPTIMIZER_DEFAULTS.get(o.optimizer, (None, 15, "linear", 1e-2))
        if cross and o.optimizer == "adadelta":
            lr, epochs, wtype, wlr = CROSS_EVAL_OPTIMIZER
        config = CROSS_EVAL if cross else BASE_CONFIG
        return {
            "config": self.config_name,
            "lr": o.lr if o.lr is not None else lr,
            "epochs": o.epochs if o.epochs is not None else epochs,
            "warmup_type": o.warmup_type or wtype,
            "warmup_lr": o.warmup_lr if o.warmup_lr is not None else wlr,
            "batch_size": o.batch_size if o.batch_size is not None else config["batch_size"],
            "depth": o.depth if o.depth is not None else config["depth"],
            "augment": o.augment if o.augment is not None else config["augment"],
        }

    # ------------------------------------------------------------------ ensemble

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        """The hand-made prompts of the init phrase, "{init} {class}." (frozen-CLIP t')."""
        template = phrase_template(self.words, self.init_phrase)
        return [template.format(name) for name in classnames]

    def resolve_epsilon(self, words: PromptWords, train_text: torch.Tensor) -> float:
        """The option ``epsilon`` for a backbone: a number as given; "backbone": 0.05 on
        OpenAI's words, else :func:`relative_epsilon` of the training classes' text."""
        epsilon = self.options.epsilon
        if epsilon != BACKBONE_WORDS:
            return float(epsilon)
        if words.as_dict() == OPENAI_WORDS.as_dict():
            return OFFICIAL_EPSILON
        return relative_epsilon(train_text)

    @property
    def init_phrase(self) -> str:
        """The text prompt's init phrase for the backbone of the last :meth:`prepare`."""
        if self.options.text_init in (None, ""):
            raise ValueError("apex: text_init must be a phrase, 'backbone' or 'official'")
        return init_phrase(self.words, self.options.text_init)

    def alpha(self, backbone: Backbone, classnames: Sequence[str]) -> torch.Tensor:
        """(E,) ensemble weights a_e of an evaluation class list (computed once per list).

        With the option ``alpha`` the classes away from every training class get that fixed
        weight; a training class (within ``epsilon``) keeps a_e = 1 in both cases."""
        key = tuple(classnames)
        if key not in self._alpha:
            o = self.options
            if self.frozen_train_text is None:
                raise RuntimeError("apex: call fit() before computing ensemble weights")
            frozen = backbone.encode_text(self.prompt_texts(key))
            self._alpha[key] = ensemble_weights(
                self.frozen_train_text, frozen, o.beta, self.epsilon, fixed=o.alpha
            )
        return self._alpha[key]

    def variant_weights(self, backbone: Backbone, classnames: Sequence[str]) -> dict:
        """Ensemble settings scored with ``variants=True``: name -> (ensemble mode, (E,) a_e).
        Names: the four modes with the adaptive a_e, and ``alpha=<x>`` (mode "both")."""
        if self.frozen_train_text is None:
            raise RuntimeError("apex: call fit() before computing ensemble weights")
        key = tuple(classnames)
        if key not in self._near:  # frozen text features of this class list
            self._near[key] = backbone.encode_text(self.prompt_texts(key))
        frozen, o = self._near[key], self.options
        adaptive = ensemble_weights(self.frozen_train_text, frozen, o.beta, self.epsilon)
        out = {mode: (mode, adaptive) for mode in ENSEMBLES}
        for x in o.variant_alphas:
            fixed = ensemble_weights(
                self.frozen_train_text, frozen, o.beta, self.epsilon, fixed=float(x)
            )
            out[f"alpha={float(x):g}"] = ("both", fixed)
        return out

    @torch.no_grad()
    def evaluate(
        self,
        backbone: Backbone,
        items: Sequence[Datum],
        classnames: Sequence[str],
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of ``items``; with ``variants=True`` the image and text features
        are computed once and every ensemble setting is scored into ``last_variants``."""
        if not self.options.variants:
            self.last_variants = None
            return super().evaluate(backbone, items, classnames, batch_size, num_workers)
        learner = self._check_fitted()
        with backbone.autocast():
            u = learner.text(classnames).float()
            adapted = learner.adapt(u)
        settings = self.variant_weights(backbone, classnames)
        settings["main"] = (self.options.ensemble, self.alpha(backbone, classnames))
        out: dict[str, list[torch.Tensor]] = {name: [] for name in settings}
        labels = []
        loader = batch_loader(backbone, items, batch_size=batch_size, num_workers=num_workers)
        for images, y, _, ok in loader:
            images = images[ok].to(backbone.device)
            with backbone.autocast():
                z_p = learner.visual(backbone.model.visual, images).float()
                z_f = backbone.model.encode_image(images).float()
            for name, (mode, a) in settings.items():
                out[name].append(blend_logits(u, adapted, z_p, z_f, a, mode, backbone.logit_scale))
            labels.append(y[ok])
        logits = {name: torch.cat(chunks) for name, chunks in out.items()}
        main = logits.pop("main")
        self.last_variants = logits
        return main, torch.cat(labels).to(main.device)

    def class_text(
        self, backbone: Backbone, classnames: Sequence[str], ensemble: bool = True
    ) -> torch.Tensor:
        """(C, d) normalised text features t (adapted, blended with a_e when ensembling)."""
        learner = self._check_fitted()
        u = learner.text(classnames).float()
        adapted = learner.adapt(u)
        if ensemble and self.options.ensemble in ("both", "text"):
            a = self.alpha(backbone, classnames).unsqueeze(1)
            adapted = a * adapted + (1 - a) * u
        return F.normalize(adapted, dim=-1)

    def image_weight(
        self, backbone: Backbone, classnames: Sequence[str], ensemble: bool = True
    ) -> float:
        """mean_e(a_e) for the image blend (1.0 when the visual ensemble is off)."""
        if not ensemble or self.options.ensemble not in ("both", "visual"):
            return 1.0
        return float(self.alpha(backbone, classnames).mean())

    # ------------------------------------------------------------------ forward

    def image_features(
        self, backbone: Backbone, images: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) normalised: weight * z_prompted + (1 - weight) * z_frozen."""
        learner = self._check_fitted()
        images = images.to(backbone.device)
        z = learner.visual(backbone.model.visual, images).float()
        if weight < 1.0:
            z_frozen = backbone.model.encode_image(images).float()
            z = weight * z + (1.0 - weight) * z_frozen
        return F.normalize(z, dim=-1)

    @torch.no_grad()
    def logits(
        self,
        backbone: Backbone,
        images: Images,
        classnames: Sequence[str],
        ensemble: bool = True,
    ) -> torch.Tensor:
        """Images -> (N, C) logits with the adaptive ensemble (see the module docstring).

        ``ensemble=False``: the adapted, prompted model as trained (what validation uses)."""
        self._check_fitted()
        with backbone.autocast():
            text = self.class_text(backbone, classnames, ensemble)
        weight = self.image_weight(backbone, classnames, ensemble)
        out = []
        for batch in image_batches(backbone, images):
            with backbone.autocast():
                z = self.image_features(backbone, batch, weight)
            out.append(backbone.logit_scale * z @ text.T)
        return torch.cat(out)

    # ------------------------------------------------------------------ training

    def prepare(
        self, backbone: Backbone, classnames: Sequence[str], seed: int = 0
    ) -> torch.Generator:
        """Build the learner at its initial state for the training classes (what ``fit``
        starts from); returns the seeded generator that ``fit`` goes on to use."""
        o = self.options
        layers = len(check_vit(backbone.model.visual).transformer.resblocks)
        depth = self.resolved()["depth"]
        if o.depth is None and depth is not None:
            depth = min(depth, layers)  # cross_eval's J = 3 on a ViT with fewer layers
        self.train_classnames = tuple(classnames)
        self._alpha, self._near = {}, {}
        self.words = backbone.words
        self.frozen_train_text = backbone.encode_text(self.prompt_texts(classnames))
        self.epsilon = self.resolve_epsilon(backbone.words, self.frozen_train_text)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.learner = APEXLearner(
                backbone, depth, o.vision_length, self.init_phrase, o.text_n_ctx, generator
            )
        return generator

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
        settings = self.resolved()
        classnames = tuple(classnames)
        generator = self.prepare(backbone, classnames, seed)
        learner = self.learner
        optimizer = build_optimizer(
            learner.parameters(), o.optimizer, settings["lr"], o.weight_decay, o.momentum
        )
        epochs = settings["epochs"]
        scheduler = epoch_scheduler(
            optimizer, epochs, o.warmup_epochs, settings["warmup_type"], settings["warmup_lr"]
        )
        step = Stepper(optimizer, backbone.device, backbone.precision)
        scale = backbone.model.logit_scale.exp().detach()
        val = [(x[ok], y[ok]) for x, y, _, ok in batch_loader(backbone, val_items)]
        val_images = torch.cat([x for x, _ in val])  # test transform: loaded once
        val_labels = torch.cat([y for _, y in val]).to(backbone.device)

        def run_epoch(epoch: int) -> list[float]:
            batches = epoch_batches(len(train_items), settings["batch_size"], generator)
            loader = batch_loader(
                backbone,
                train_items,
                batches,
                augmentation_seed(seed, epoch) if settings["augment"] else None,
                num_workers=num_workers,
                scale=self.crop_scale(backbone),
            )
            losses = []
            for images, labels, _, ok in loader:
                with backbone.autocast():
                    z = self.image_features(backbone, images[ok])
                    t = F.normalize(learner.adapt(learner.text(classnames).float()), dim=-1)
                    loss = F.cross_entropy(scale * z @ t.T, labels[ok].to(backbone.device))
                losses.append(step(loss))
            return losses

        def validate() -> float:
            # the ensemble is an inference device for new classes: select on the model as
            # trained (a_e = 1 on the training classes, whatever the ensemble options)
            logits = self.logits(backbone, val_images, classnames, ensemble=False)
            return accuracy(logits, val_labels)

        result = fit_loop(
            learner,
            scheduler,
            epochs,
            run_epoch,
            validate,
            o.selection,
            progress,
            desc=self.name,
            ties=o.ties,
        )
        result.chosen.update({**settings, "depth": learner.visual.depth})
        result.notes.append(words_note(self.name, self.words, o.text_init))
        result.notes.append(f"apex: epsilon {self.epsilon:.4g} (option {o.epsilon!r})")
        result.notes.append(
            "apex: z_frozen from the untouched backbone (the official frozen copy carries "
            "random visual prompts); a_e computed once per class list"
        )
        return result
