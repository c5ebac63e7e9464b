"""The interface of encoder-level methods (CoOp, CoCoOp, APEX, TOMM) and what they share.

Unlike feature-level methods (:mod:`fewclip.methods.base`), these learn parameters that
feed the frozen encoders (prompt tokens), so ``fit`` sees the backbone and the few-shot
images, and ``logits`` takes images and a class list::

    method = get_method("coop", n_ctx=16)
    fit = method.fit(backbone, train_items, val_items, base_classnames, seed=1)
    logits, labels = method.evaluate(backbone, new_test_items, new_classnames)

Evaluating on a class list other than the training one is base-to-new generalisation:
the learned context is reused with the new class names. Encoder methods are registered in
the same registry as feature methods (:func:`fewclip.fitting.register_method`); the
run layer tells them apart with ``issubclass(cls, EncoderMethod)``.

Text-side methods (CoOp, CoCoOp, TOMM) never change the image encoder, so image features
are computed once and training runs only the text encoder per step
(:class:`FeaturePromptMethod`). The augmentation follows Dassl (random resized crop with
scale 0.08-1 + flip); cached view ``v`` is drawn with the same seed as epoch ``v`` of
on-line training, so with as many views as epochs the two are the same computation.
Epoch ``e`` uses view ``e % V``.

Shapes: ``M`` training images, ``V`` views, ``d`` joint dimension, ``T`` patch tokens,
``C`` classes, ``w`` text width. Image features are L2-normalised.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import BACKBONE_WORDS, Backbone, words_note
from ..data.base import Datum
from ..fitting import FitResult, check_method_options
from ..images import DASSL_CROP_SCALE, ImageDataset, train_transform
from ..metrics import accuracy
from ..progress import tqdm
from .backbone_constants import BACKBONE_CROP, check_crop_option, train_crop_scale
from .training import (
    Stepper,
    augmentation_seed,
    build_optimizer,
    epoch_batches,
    epoch_scheduler,
    fit_loop,
)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (:func:`fewclip.metrics.accuracy`)."""
    return accuracy(logits, labels)


Images = torch.Tensor | Iterable | Sequence[Datum]


# --------------------------------------------------------------------------- images


def dassl_transform(backbone: Backbone, scale: tuple[float, float] = DASSL_CROP_SCALE):
    """Dassl's train transform for this backbone: random resized crop (area in ``scale``,
    Dassl's 0.08-1 unless a method's ``crop_scale_min`` says else) + flip."""
    cfg = backbone.preprocess_cfg
    return train_transform(backbone.image_size, cfg["mean"], cfg["std"], scale=scale)


def batch_loader(
    backbone: Backbone,
    items: Sequence[Datum],
    batches: list[list[int]] | None = None,
    augment_seed: int | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    scale: tuple[float, float] = DASSL_CROP_SCALE,
) -> DataLoader:
    """Items -> (images, labels, index, ok) batches.

    ``augment_seed`` None: the test transform (backbone.preprocess); else Dassl's train
    transform, item ``i`` drawn from a generator seeded by (augment_seed, i).
    ``batches``: explicit index batches (a training epoch), else sequential batches.
    """
    if augment_seed is None:
        dataset = ImageDataset(items, backbone.preprocess, backbone.image_size)
    else:
        dataset = ImageDataset(
            items, dassl_transform(backbone, scale), backbone.image_size, seed=augment_seed
        )
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def image_batches(
    backbone: Backbone, images: Images, batch_size: int = 128, num_workers: int = 0
) -> Iterable[torch.Tensor]:
    """Normalise the ``images`` argument of ``logits``: a (B, 3, H, W) tensor (split into
    ``batch_size`` chunks), an iterable of loader batches (tensor or (images, labels, ...)
    tuples), or a list of :class:`Datum`."""
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
        return
    if isinstance(images, Sequence) and images and isinstance(images[0], Datum):
        images = batch_loader(backbone, images, batch_size=batch_size, num_workers=num_workers)
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def encode_plain(
    backbone: Backbone, images: torch.Tensor, tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen encoder: (B, 3, H, W) -> ((B, d) normalised features, (B, T, d) normalised
    patch tokens or None; see :mod:`fewclip.prompting.patch_tokens`)."""
    from .patch_tokens import image_tokens  # lazily: it imports open_clip (seconds)

    images = images.to(backbone.device)
    with backbone.autocast():
        if tokens:
            pooled, toks = image_tokens(backbone.model.visual, images)  # ViT or ResNet
        else:
            pooled, toks = backbone.model.encode_image(images), None
    pooled = F.normalize(pooled.float(), dim=-1)
    return pooled, None if toks is None else F.normalize(toks.float(), dim=-1)


@dataclass
class CachedImages:
    """Frozen-encoder features of the few-shot images (what text-side methods train on).

    train: (V, M, d) features of V augmented views; train_labels (M,).
    val:   (Nv, d) features under the test transform; val_labels (Nv,).
    train_tokens (V, M, T, d) / val_tokens (Nv, T, d): normalised patch tokens, only for
    methods that attend over image tokens. Unreadable images are already dropped.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    train_tokens: torch.Tensor | None = None
    val_tokens: torch.Tensor | None = None

    @property
    def views(self) -> int:
        return self.train.shape[0]

    def view(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        v = epoch % self.views
        return self.train[v], None if self.train_tokens is None else self.train_tokens[v]


@torch.no_grad()
def encode_items(
    backbone: Backbone,
    items: Sequence[Datum],
    augment_seed: int | None = None,
    tokens: bool = False,
    batch_size: int = 128,
    num_workers: int = 0,
    scale: tuple[float, float] = DASSL_CROP_SCALE,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Items -> (features (N, d), tokens (N, T, d) or None, labels (N,), valid (N,)).
    No items (``RunConfig(val="none")``'s val): empty tensors, (0, d) and (0, 0, d)."""
    if not items:
        empty = torch.zeros(0, backbone.embed_dim, device=backbone.device)
        none = torch.zeros(0, dtype=torch.long, device=backbone.device)
        toks = empty.new_zeros(0, 0, backbone.embed_dim) if tokens else None
        return empty, toks, none, none.bool()
    feats, toks, labels, valid = [], [], [], []
    loader = batch_loader(
        backbone,
        items,
        augment_seed=augment_seed,
        batch_size=batch_size,
        num_workers=num_workers,
        scale=scale,
    )
    for images, y, _, ok in loader:
        f, t = encode_plain(backbone, images, tokens)
        feats.append(f)
        toks.append(t)
        labels.append(y)
        valid.append(ok)
    return (
        torch.cat(feats),
        torch.cat(toks) if tokens else None,
        torch.cat(labels).to(backbone.device),
        torch.cat(valid).to(backbone.device),
    )


def cache_images(
    backbone: Backbone,
    train_items: Sequence[Datum],
    val_items: Sequence[Datum],
    views: int,
    seed: int,
    tokens: bool = False,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = False,
    scale: tuple[float, float] = DASSL_CROP_SCALE,
) -> CachedImages:
    """Encode ``views`` Dassl-augmented views of the training images (view ``v`` drawn with
    :func:`augmentation_seed` (seed, v)) and the val images under the test transform.

    ``views=0`` (on-line training) encodes only the val images; ``train`` is then (0, M, d).
    """
    val, val_tokens, val_labels, val_ok = encode_items(
        backbone, val_items, None, tokens, batch_size, num_workers
    )
    labels = torch.tensor([d.label for d in train_items], device=val.device)
    keep = torch.ones_like(labels, dtype=torch.bool)
    train: list[torch.Tensor] = []
    train_tokens: list[torch.Tensor] = []
    if views == 0:
        train.append(val.new_zeros(0, len(train_items), val.shape[-1]))
        if tokens:
            train_tokens.append(val_tokens.new_zeros(0, len(train_items), *val_tokens.shape[1:]))
    for v in tqdm(range(views), desc="cache views", disable=not progress, leave=False):
        f, t, labels, ok = encode_items(
            backbone,
            train_items,
            augmentation_seed(seed, v),
            tokens,
            batch_size,
            num_workers,
            scale,
        )
        train.append(f.unsqueeze(0))
        if tokens:
            train_tokens.append(t.unsqueeze(0))
        keep = keep & ok
    return CachedImages(
        train=torch.cat(train)[:, keep],
        train_labels=labels[keep],
        val=val[val_ok],
        val_labels=val_labels[val_ok],
        train_tokens=torch.cat(train_tokens)[:, keep] if tokens else None,
        val_tokens=val_tokens[val_ok] if tokens else None,
    )


# --------------------------------------------------------------------------- interface


@dataclass
class TrainOptions:
    """Training settings shared by the encoder-level methods (Dassl names)."""

    epochs: int | None = None  # None: the method's default
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4  # Dassl's default
    warmup_epochs: int = 1
    warmup_type: str = "constant"
    warmup_lr: float = 1e-5
    # training crop area: "backbone" (its pretraining crop where declared, else Dassl's),
    # "official" (Dassl's 0.08-1), or a number (see fewclip.prompting.backbone_constants)
    crop_scale_min: str | float = BACKBONE_CROP
    selection: str = "val"  # "val": best epoch on val; "last": the official codes' choice
    ties: str = "last"  # equal val accuracy: the later epoch ("first": Dassl's best_val)


class EncoderMethod(ABC):
    """A method that learns inputs of the frozen encoders. Subclasses define ``name``,
    ``Options`` (a dataclass), ``fit`` and ``logits``."""

    name: ClassVar[str]

    @dataclass
    class Options(TrainOptions):
        pass

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**check_method_options(self.name, self.Options, options))
        check_crop_option(self.options.crop_scale_min)
        self.learner: nn.Module | None = None
        self.train_classnames: tuple[str, ...] | None = None

    @property
    def uses_backbone_crop(self) -> bool:
        """Whether the training crop follows the backbone's pretraining crop (the run key
        then includes it, :func:`fewclip.backbones.crop_key`)."""
        return self.options.crop_scale_min == BACKBONE_CROP

    def crop_scale(self, backbone: Backbone) -> tuple[float, float]:
        """The random-resized-crop area range of training views on ``backbone``."""
        return train_crop_scale(backbone, self.options.crop_scale_min)

    @abstractmethod
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
        """Learn on ``train_items`` (labels index ``classnames``); select on ``val_items``."""

    @abstractmethod
    def logits(self, backbone: Backbone, images: Images, classnames: Sequence[str]) -> torch.Tensor:
        """Images (tensor, loader or Datum list) -> (N, C) logits over ``classnames``."""

    @torch.no_grad()
    def evaluate(
        self,
        backbone: Backbone,
        items: Sequence[Datum],
        classnames: Sequence[str],
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of ``items`` under the test transform (unreadable images dropped)."""
        loader = batch_loader(backbone, items, batch_size=batch_size, num_workers=num_workers)
        logits, labels = [], []
        for images, y, _, ok in loader:
            logits.append(self.logits(backbone, images[ok], classnames))
            labels.append(y[ok])
        return torch.cat(logits), torch.cat(labels).to(logits[0].device)

    def accuracy(self, backbone: Backbone, items: Sequence[Datum], classnames: Sequence[str]):
        """Top-1 accuracy (percent) of ``items`` over ``classnames``."""
        logits, labels = self.evaluate(backbone, items, classnames)
        return top1(logits, labels)

    def trainable_parameters(self) -> int:
        if self.learner is None:
            return 0
        return sum(p.numel() for p in self.learner.parameters() if p.requires_grad)

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def _check_fitted(self) -> nn.Module:
        if self.learner is None:
            raise RuntimeError(f"{self.name}: call fit() before logits()")
        return self.learner

    def epoch_record(self) -> dict[str, float]:
        """Extra values recorded in each epoch's ``history`` row (e.g. a learned gate)."""
        return {}

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups; the first runs at ``options.lr`` (and sets the
        schedule), others may carry their own ``lr``. Default: one group, every parameter."""
        return [{"params": list(self._check_fitted().parameters())}]

    def _optimizer_and_schedule(self, epochs: int):
        o = self.options
        optimizer = build_optimizer(
            self.parameter_groups(), o.optimizer, o.lr, o.weight_decay, o.momentum
        )
        scheduler = epoch_scheduler(optimizer, epochs, o.warmup_epochs, o.warmup_type, o.warmup_lr)
        return optimizer, scheduler


@dataclass
class FeaturePromptOptions(TrainOptions):
    """Text-side methods: image features are cached (``views`` augmented views, epoch ``e``
    uses view ``e % views``; None: one view per epoch). ``cache_images=False`` re-encodes
    augmented images at every step instead, as the official code does (for comparison)."""

    views: int | None = 10
    cache_images: bool = True


class FeaturePromptMethod(EncoderMethod):
    """A text-side method: the image encoder is the frozen one, so training runs on cached
    image features and only the text encoder is run per step.

    Subclasses implement ``build`` (create ``self.learner``, and set ``self.words`` to the
    backbone's words when they read them), ``feature_logits`` and may override ``loss``
    (default: cross-entropy of ``feature_logits``). A subclass whose prompt starts from a
    phrase names its option in ``init_option``: ``"backbone"`` there puts the backbone's
    words in the run key (``uses_backbone_words``) and the fit's notes name the phrase.
    """

    #: the option holding the init phrase ("backbone", "official", a phrase, None: random)
    init_option: ClassVar[str | None] = None

    @dataclass
    class Options(FeaturePromptOptions):
        pass

    @property
    def uses_backbone_words(self) -> bool:
        """Whether the init phrase comes from the backbone (the run key then includes it)."""
        option = self.init_option
        return option is not None and getattr(self.options, option) == BACKBONE_WORDS

    @property
    def needs_tokens(self) -> bool:
        """Whether the method attends over patch tokens (then they are cached too)."""
        return False

    def default_epochs(self, shots: int) -> int:
        return 10

    @abstractmethod
    def build(self, backbone: Backbone, classnames: Sequence[str], generator: torch.Generator):
        """Create ``self.learner`` (an nn.Module holding every learnable parameter)."""

    @abstractmethod
    def feature_logits(
        self, features: torch.Tensor, classnames: Sequence[str], tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, d) normalised frozen image features (+ (B, T, d) tokens) -> (B, C) logits."""

    def prepare(
        self, backbone: Backbone, classnames: Sequence[str], seed: int = 0
    ) -> torch.Generator:
        """Build the learner at its initial state (what ``fit`` starts from); returns the
        seeded generator that ``fit`` goes on to use for shuffling."""
        self.train_classnames = tuple(classnames)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.build(backbone, self.train_classnames, generator)
        return generator

    def loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str],
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return F.cross_entropy(self.feature_logits(features, classnames, tokens), labels)

    @torch.no_grad()
    def logits(self, backbone: Backbone, images: Images, classnames: Sequence[str]) -> torch.Tensor:
        self._check_fitted()
        out = []
        for batch in image_batches(backbone, images):
            features, tokens = encode_plain(backbone, batch, self.needs_tokens)
            out.append(self.feature_logits(features, classnames, tokens))
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
        features: CachedImages | None = None,
    ) -> FitResult:
        """Train on cached features (``features`` given by the caller, or computed here).

        With ``cache_images=False`` the training images are re-encoded at every step from
        freshly augmented images; ``features`` then only supplies the val features.
        """
        o = self.options
        classnames = tuple(classnames)
        num_classes = len(classnames)
        shots = max(1, round(len(train_items) / max(1, num_classes))) if train_items else 1
        epochs = o.epochs if o.epochs is not None else self.default_epochs(shots)
        tokens = self.needs_tokens
        if features is None:
            views = min(o.views or epochs, epochs) if o.cache_images else 0
            features = cache_images(
                backbone,
                train_items,
                val_items,
                views,
                seed,
                tokens,
                num_workers=num_workers,
                progress=progress,
                scale=self.crop_scale(backbone),
            )
        if o.cache_images and features.views == 0:
            raise ValueError(f"{self.name}: the cached features hold no training view")
        if tokens and features.val_tokens is None:
            raise ValueError(f"{self.name}: this configuration needs cached patch tokens")
        generator = self.prepare(backbone, classnames, seed)
        learner = self._check_fitted()
        optimizer, scheduler = self._optimizer_and_schedule(epochs)
        step = Stepper(optimizer, backbone.device, backbone.precision)
        labels_all = features.train_labels
        num = labels_all.shape[0] if o.cache_images else len(train_items)
        used: set[int] = set()  # on-line training: the readable images that reached the loss

        def run_epoch(epoch: int) -> list[float]:
            batches = epoch_batches(num, o.batch_size, generator)
            losses = []
            if o.cache_images:
                feats, toks = features.view(epoch)
                for idx in batches:
                    i = torch.tensor(idx, device=feats.device)
                    with backbone.autocast():
                        loss = self.loss(
                            feats[i], labels_all[i], classnames, None if toks is None else toks[i]
                        )
                    losses.append(step(loss))
                return losses
            loader = batch_loader(
                backbone,
                train_items,
                batches,
                augmentation_seed(seed, epoch),
                num_workers=num_workers,
                scale=self.crop_scale(backbone),
            )
            for images, y, index, ok in loader:
                used.update(index[ok].tolist())
                f, t = encode_plain(backbone, images[ok], tokens)
                with backbone.autocast():
                    loss = self.loss(f, y[ok].to(f.device), classnames, t)
                losses.append(step(loss))
            return losses

        def validate() -> float | None:
            if features.val_labels.numel() == 0:  # RunConfig(val="none")
                return None
            with backbone.autocast():
                logits = self.feature_logits(features.val, classnames, features.val_tokens)
            return top1(logits.float(), features.val_labels)

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
            record=self.epoch_record,
        )
        result.chosen["epochs"] = epochs
        # what training used: the readable images (cached: those readable in every view)
        result.train_images = int(labels_all.shape[0]) if o.cache_images else len(used)
        if o.cache_images:
            result.notes.append(
                f"{self.name}: trained on {features.views} cached augmented view(s) of the "
                f"frozen image features (epoch e uses view e % {features.views})"
            )
        if self.init_option is not None:
            phrase = getattr(self.options, self.init_option)
            result.notes.append(words_note(self.name, self.words, phrase))
        return result
