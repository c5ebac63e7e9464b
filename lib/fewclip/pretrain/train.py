"""Contrastive pretraining of the project's tiny CLIP models on the emoji corpus.

Standard CLIP objective (open_clip's ``ClipLoss``: symmetric cross-entropy over the
in-batch image-text similarity matrix, learnable temperature), AdamW with cosine decay
after a linear warm-up, a fixed number of steps and a seed. Each step draws
``batch_size`` distinct emoji (so no caption in a batch is another image's positive), one
random image of each (style or skin-tone variant) with a random crop and, sometimes, a
grey-scale copy, and one random caption (:func:`fewclip.pretrain.data.build_caption`).
``init_from`` warm-starts from a checkpoint (the multi-style checkpoints continue the
version-1 ones; their config says so). Training state is checkpointed atomically every
``checkpoint_every`` steps and resumed from there; the state holds only tensors and plain
containers and is read back with ``torch.load(weights_only=True)`` (a planted file cannot
run code, see :func:`load_state`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.ops import roi_align

from ..backbones import CONFIG_DIR, open_clip, save_checkpoint  # configs registered
from ..progress import tqdm
from .data import PROMPT_WORDS, TRAIN_STYLES, TrainingSet, build_training_set

CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@dataclass
class PretrainConfig:
    arch: str = "tiny-emoji-rn"
    corpus: str = "data/emoji-corpus"
    out_dir: str = "runs/pretrain"
    steps: int = 2500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    threads: int = 0  # 0: all cores
    checkpoint_every: int = 250
    log_every: int = 25
    crop_scale_min: float = 0.6
    grayscale_p: float = 0.2
    #: colour jitter strength s: brightness, contrast and saturation factors drawn per image
    #: in [1 - s, 1 + s] (0 = off, the version-1 recipe)
    color_jitter: float = 0.0
    #: probability of a 3x3 box blur of an image (0 = off, the version-1 recipe)
    blur_p: float = 0.0
    #: probability of dark outlines drawn along an image's shape and colour edges (0 = off)
    outline_p: float = 0.0
    #: probability of an image turned into a line drawing: its edges black on white (0 = off)
    sketch_p: float = 0.0
    #: probability of an image shrunk onto a white canvas instead of cropped (0 = off): the
    #: held-out styles draw their glyphs smaller than the pretraining styles do
    zoom_out_p: float = 0.0
    #: the smallest side of a shrunk image, as a share of the canvas (uniform up to 1)
    zoom_out_min: float = 0.7
    #: comma-separated corpus styles (only the corpus's TRAIN_STYLES are accepted)
    styles: str = ",".join(TRAIN_STYLES)
    #: "style": a style of the emoji, then an image of it; "image": any of its images (v1)
    sampling: str = "style"
    #: probability of a caption with CLDR keywords (when the emoji has some)
    keyword_p: float = 0.3
    #: probability of a group caption: the subcategory or category alone, no name (0 = off,
    #: versions 1-4); identical captions of a batch are then positives of each other
    group_p: float = 0.0
    #: the share of group captions that name the category (the rest: the subcategory)
    group_category_share: float = 1 / 3
    #: a checkpoint (.safetensors) to start from instead of a random init ("" = random)
    init_from: str = ""
    #: hold the images and the model in the channels-last memory layout: the same
    #: computation up to float rounding, faster convolutions on CPU (the RN's image tower;
    #: benchmarks/bench_pretrain_layout.py); off in every model card's recipe
    channels_last: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.arch

    @property
    def style_tuple(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.styles.split(",") if s.strip())


def augment(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale_min: float = 0.6,
    grayscale_p: float = 0.2,
    color_jitter: float = 0.0,
    blur_p: float = 0.0,
    outline_p: float = 0.0,
    sketch_p: float = 0.0,
    zoom_out_p: float = 0.0,
    zoom_out_min: float = 0.7,
) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) normalised float: random resized crop
    (area in [scale_min, 1], aspect in [3/4, 4/3]) resampled by ``roi_align``, random grey.

    With ``color_jitter = s > 0`` each image then gets brightness ``x * b``, contrast
    ``m + c (x - m)`` (``m`` its mean luminance) and saturation ``l + a (x - l)`` (``l`` the
    pixel's luminance), factors ``b, c, a`` uniform in ``[1 - s, 1 + s]``, clamped to [0, 1];
    with ``blur_p > 0`` that share of images is 3x3 box-blurred. Two style changes
    (version 3), generic drawing styles of icon sets: ``outline_p`` of the images get
    dark outlines (pixels on an edge, where the luminance differs from a 4-neighbour's by
    more than 0.2, or on the shape's border against the white background, set to a
    darkness in [0, 0.25]); ``sketch_p`` become line drawings (the same edges black on
    white). ``zoom_out_p`` of the images are not cropped but shrunk: the whole image, its
    side a share in [zoom_out_min, 1] of the output's, at a random place on a white
    canvas (the held-out styles draw their glyphs at 0.78-0.88 of the canvas, the
    pretraining styles at 0.94-1.0). Each draws from ``generator`` only when on, so
    ``s = 0`` and zero probabilities draw exactly what version 1 drew.
    """
    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(scale_min, 1.0, generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    cw = (area * ratio).sqrt().clamp(max=1.0) * w
    ch = (area / ratio).sqrt().clamp(max=1.0) * h
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], dim=1)
    x = roi_align(images.float() / 255.0, boxes, output_size=size, sampling_ratio=2, aligned=True)
    if zoom_out_p > 0:
        x = _zoom_out(images, x, size, generator, zoom_out_p, zoom_out_min)
    grey = torch.rand(b, generator=generator) < grayscale_p
    if grey.any():
        lum = _luminance(x)
        x[grey] = lum[grey].expand(-1, 3, -1, -1)
    if color_jitter > 0:
        x = _jitter_colours(x, color_jitter, generator)
    if blur_p > 0:
        blur = torch.rand(b, generator=generator) < blur_p
        if blur.any():
            x[blur] = torch.nn.functional.avg_pool2d(
                x[blur], 3, stride=1, padding=1, count_include_pad=False
            )
    if outline_p > 0:
        chosen = torch.rand(b, generator=generator) < outline_p
        darkness = torch.empty(b, 1, 1, 1).uniform_(0.0, 0.25, generator=generator)
        if chosen.any():
            edges = _edges(x[chosen])
            x[chosen] = torch.where(edges, darkness[chosen], x[chosen])
    if sketch_p > 0:
        chosen = torch.rand(b, generator=generator) < sketch_p
        if chosen.any():
            x[chosen] = (~_edges(x[chosen])).float().expand(-1, 3, -1, -1)
    return (x - CLIP_MEAN) / CLIP_STD


def _zoom_out(
    images: torch.Tensor, x: torch.Tensor, size: int, generator, p: float, smallest: float
) -> torch.Tensor:
    """x (B, 3, size, size) with ``p`` of its images replaced by the whole of
    ``images`` (B, 3, H, W) uint8 shrunk to a side share u ~ U[smallest, 1] of the
    output, at a uniform place on white: a ``roi_align`` box of side H / u around the image
    on the inverted image (roi_align reads 0 outside it: white once inverted back)."""
    b, _, h, w = images.shape
    chosen = torch.rand(b, generator=generator) < p
    share = torch.empty(b).uniform_(smallest, 1.0, generator=generator)
    place = torch.rand(2, b, generator=generator)
    if not chosen.any():
        return x
    share, place = share[chosen], place[:, chosen]
    side_w, side_h = w / share, h / share
    x0 = -place[0] * (side_w - w)
    y0 = -place[1] * (side_h - h)
    index = torch.arange(share.numel(), dtype=torch.float)
    boxes = torch.stack([index, x0, y0, x0 + side_w, y0 + side_h], 1)
    inverted = 1.0 - images[chosen].float() / 255.0
    shrunk = roi_align(inverted, boxes, output_size=size, sampling_ratio=2, aligned=True)
    x[chosen] = 1.0 - shrunk
    return x


#: Luminance step between 4-neighbours that counts as an edge (outline augmentation).
EDGE_STEP = 0.2
#: Luminance above which a pixel is background (the corpus composites on white).
BACKGROUND_LUMINANCE = 0.97


def _edges(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) bool: a luminance step of more than
    EDGE_STEP to the right or below neighbour, or a foreground pixel next to background."""
    lum = _luminance(x)
    step = torch.zeros_like(lum, dtype=torch.bool)
    step[..., :, :-1] |= (lum[..., :, 1:] - lum[..., :, :-1]).abs() > EDGE_STEP
    step[..., :-1, :] |= (lum[..., 1:, :] - lum[..., :-1, :]).abs() > EDGE_STEP
    background = (lum > BACKGROUND_LUMINANCE).float()
    near_background = torch.nn.functional.max_pool2d(background, 3, stride=1, padding=1) > 0
    return step | (near_background & (background == 0))


def _luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601 weights."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _jitter_colours(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors per image in [1 - s, 1 + s] (see augment)."""
    b = x.shape[0]
    factors = torch.empty(3, b, 1, 1, 1).uniform_(1 - strength, 1 + strength, generator=generator)
    x = x * factors[0]
    mean = _luminance(x).mean(dim=(2, 3), keepdim=True)
    x = mean + factors[1] * (x - mean)
    lum = _luminance(x)
    x = lum + factors[2] * (x - lum)
    return x.clamp(0.0, 1.0)


def clip_loss(
    image_f: torch.Tensor,
    text_f: torch.Tensor,
    scale: torch.Tensor,
    captions: list[str],
    distinct_loss: torch.nn.Module | None = None,
) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over a batch of (B, d) image and text features.

    Image i's target is uniform over the texts whose caption equals caption i (and text i's
    over those images), so two emoji captioned alike (a group caption, "a person role
    emoji.") are not pushed apart. With all captions distinct that is CLIP's loss with
    labels ``arange(B)``: ``distinct_loss`` (``open_clip.ClipLoss()``, the versions-1-4
    recipes' loss) is then used as is.
    """
    if len(set(captions)) == len(captions):
        loss_fn = distinct_loss or open_clip.ClipLoss()
        return loss_fn(image_f, text_f, scale)
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions], device=image_f.device)
    same = (ids[:, None] == ids[None, :]).to(image_f.dtype)
    target = same / same.sum(1, keepdim=True)
    logits = scale * image_f @ text_f.T
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    tokens: torch.Tensor,
    captions: list[str],
    distinct_loss: torch.nn.Module | None = None,
) -> torch.Tensor:
    """One optimisation step on a batch: :func:`clip_loss` of the model's (B, d) features,
    backward, the optimizer's step, then CLIP's clamp of the temperature at 100; returns
    the loss."""
    image_f, text_f, scale = model(images, tokens)
    loss = clip_loss(image_f, text_f, scale, captions, distinct_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' scale and logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def load_state(path: Path) -> dict:
    """A training state written by :func:`pretrain`, read with ``weights_only=True``: only
    tensors and plain containers are accepted, so a planted file cannot run code. Raises
    ValueError naming the file when it is not such a state."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{path} is not a fewclip training state that can be loaded safely ({reason[:200]}); "
            "delete it to start the run afresh"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "rng", "step"} <= set(state):
        raise ValueError(f"{path} is not a fewclip training state; delete it to start afresh")
    return state


def _rng_state(rng: random.Random) -> list:
    """``random.Random`` state as plain lists (safe to store and to load)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from."""
    if not log_path.is_file():
        return
    rows = [r for r in log_path.read_text().splitlines() if r.strip()]
    kept = [r for r in rows if json.loads(r)["step"] <= step]
    log_path.write_text("".join(r + "\n" for r in kept))


def pretrain(cfg: PretrainConfig, data: TrainingSet | None = None, progress: bool = True) -> Path:
    """Train (or resume) and write ``<run_dir>/<arch>.safetensors`` (fp16); returns its path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    log_path = run_dir / "train_log.jsonl"
    config = {**asdict(cfg), "prompt_words": PROMPT_WORDS}  # read by fewclip.backbones
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    arch_cfg = CONFIG_DIR / f"{cfg.arch}.json"
    (run_dir / "model_config.json").write_text(arch_cfg.read_text())

    data = data or build_training_set(
        cfg.corpus,
        cfg.style_tuple,
        cfg.sampling,
        cfg.keyword_p,
        cfg.group_p,
        cfg.group_category_share,
    )
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(cfg.arch, pretrained=None)
    if cfg.init_from:
        model.load_state_dict(load_file(cfg.init_from), strict=True)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    image_size = open_clip.get_model_config(cfg.arch)["vision_cfg"]["image_size"]
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    loss_fn = open_clip.ClipLoss()
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if state_path.is_file():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(rng, state["rng"])
        gen.set_state(state["generator"])
        step = state["step"]
        _truncate_log(log_path, step)
        print(f"resumed {cfg.arch} from step {step}")
    else:
        log_path.write_text("")

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.arch}", disable=not progress)
    t0, window = time.time(), []
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        images_u8, captions = data.sample_batch(cfg.batch_size, rng)
        images = augment(
            images_u8,
            image_size,
            gen,
            cfg.crop_scale_min,
            cfg.grayscale_p,
            cfg.color_jitter,
            cfg.blur_p,
            cfg.outline_p,
            cfg.sketch_p,
            cfg.zoom_out_p,
            cfg.zoom_out_min,
        ).contiguous(memory_format=layout)
        loss = train_step(model, optimizer, images, tokenizer(captions), captions, loss_fn)
        step += 1
        window.append(loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                "loss": sum(window) / len(window),
                "logit_scale": float(model.logit_scale.detach().exp()),
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed_s": round(time.time() - t0, 1),
            }
            window = []
            bar.set_postfix(loss=f"{row['loss']:.3f}", scale=f"{row['logit_scale']:.1f}")
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_state(
                state_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": _rng_state(rng),
                    "generator": gen.get_state(),
                    "step": step,
                },
            )
    bar.close()
    return save_checkpoint(model, run_dir / f"{cfg.arch}.safetensors", half=True)
