"""Backbones: any open_clip model by architecture + pretrained tag, or a local checkpoint file.

    bb = load_backbone("RN50", "openai")                     # open_clip tag, from the local cache
    bb = load_backbone("ViT-B-16", "/weights/vit_b16.pt")    # a local checkpoint file
    bb = load_backbone("tiny-emoji-rn")                      # fewclip's own tiny CLIP
    bb = load_backbone("fewclip-test-vit", None)             # random init (tests only)

Offline by default: a pretrained tag is resolved from the local cache only, and a missing
weight raises :class:`WeightsNotFoundError` naming the file and how to get it. Pass
``allow_download=True`` to let open_clip fetch it.

The project registers its own architectures (JSON files in ``fewclip/model_configs``) with
open_clip, so they are built by open_clip's factory like any other model; the project's
pretrained weights live in ``fewclip/weights`` and are listed in :data:`PROJECT_WEIGHTS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
open_clip.add_model_config(CONFIG_DIR)

#: Project architectures meant for unit tests: random init, a few hundred K parameters.
TEST_ARCHS = ("fewclip-test-rn", "fewclip-test-vit")


@dataclass(frozen=True)
class ProjectWeights:
    """A checkpoint trained and committed by this project."""

    arch: str
    file: str
    description: str

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


#: Pretrained weights that ship with the package, by name (the name is also the arch).
PROJECT_WEIGHTS: dict[str, ProjectWeights] = {
    "tiny-emoji-rn": ProjectWeights(
        "tiny-emoji-rn",
        "tiny-emoji-rn.safetensors",
        "toy-scale ResNet CLIP pretrained by fewclip on emoji images (see fewclip.pretrain)",
    ),
    "tiny-emoji-vit": ProjectWeights(
        "tiny-emoji-vit",
        "tiny-emoji-vit.safetensors",
        "toy-scale ViT CLIP pretrained by fewclip on emoji images (see fewclip.pretrain)",
    ),
}

DEFAULT_ARCH = "tiny-emoji-rn"
RANDOM_INIT = (None, "none", "random", "")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine (and downloading was not allowed)."""


class UnknownBackboneError(ValueError):
    """An architecture or pretrained tag that neither open_clip nor fewclip knows."""


def list_architectures() -> list[str]:
    """Every architecture name accepted by :func:`load_backbone`."""
    return open_clip.list_models()


def list_pretrained(arch: str) -> list[str]:
    """Pretrained tags known for ``arch`` (open_clip's registry plus the project's own)."""
    tags = list(open_clip.list_pretrained_tags_by_model(arch))
    if arch in PROJECT_WEIGHTS:
        tags.insert(0, "default")
    return tags


# --------------------------------------------------------------------------- device


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available here")
    return torch.device(device)


def select_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto``: mixed precision (fp16 autocast) on CUDA, float32 on CPU."""
    valid = ("auto", "fp32", "amp", "amp_bf16")
    if precision not in valid:
        raise ValueError(f"unknown precision {precision!r}; choose one of {valid}")
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a (device, precision) pair; a no-op for fp32."""
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- weights


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised on (path, size, mtime)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime)


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> tuple[str | None, str]:
    """Where open_clip would keep a tag's weights, and whether they are already there.

    Returns (path or None, human description of the expected location). Never touches
    the network.
    """
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found, f"Hugging Face cache, repo {repo_id}"
        where = f"the Hugging Face cache ({cache_dir or '~/.cache/huggingface'}), repo {repo_id}"
        if not url:
            return None, where
    if url:
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        target = os.path.join(folder, os.path.basename(url))
        if os.path.isfile(target):
            return target, target
        return None, (f"{target} (from {url})" if not hub else f"{where}, or {target}")
    return None, "nowhere known"


def resolve_weights(
    arch: str,
    pretrained: str | os.PathLike | None,
    *,
    cache_dir: str | None = None,
    allow_download: bool = False,
) -> str | None:
    """Turn (arch, pretrained) into a local checkpoint path, or None for random init.

    ``pretrained`` is one of: None/"none" (random init), "default" (the project's
    weights for a project arch, else ``openai``), an open_clip tag, or a file path.
    """
    if arch not in list_architectures():
        raise UnknownBackboneError(
            f"unknown backbone architecture {arch!r}. Project models: "
            f"{sorted(PROJECT_WEIGHTS) + list(TEST_ARCHS)}; open_clip models include "
            "RN50, RN101, ViT-B-32, ViT-B-16, ViT-L-14 (fewclip.backbones.list_architectures() "
            "lists all)"
        )
    if pretrained in RANDOM_INIT:
        return None
    pretrained = str(pretrained)
    if pretrained == "default":
        if arch in PROJECT_WEIGHTS:
            return _project_weights_path(arch)
        pretrained = "openai"
    if arch in PROJECT_WEIGHTS and pretrained == arch:
        return _project_weights_path(arch)
    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        looks_like_path = os.sep in pretrained or pretrained.endswith(
            (".pt", ".bin", ".safetensors")
        )
        if looks_like_path:
            raise WeightsNotFoundError(f"checkpoint file not found: {pretrained}")
        raise UnknownBackboneError(
            f"unknown pretrained tag {pretrained!r} for {arch}; known tags: "
            f"{list_pretrained(arch) or '(none)'}, or 'none' for random init, or a checkpoint path"
        )
    found, where = _cached_tag_file(cfg, cache_dir)
    if found:
        return found
    if allow_download:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    raise WeightsNotFoundError(
        f"pretrained weights {arch}/{pretrained} are not on this machine (looked in {where}). "
        "Either download them once on a machine with internet, e.g. "
        f"`python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{pretrained}'"
        f'{", cache_dir=" + repr(cache_dir) if cache_dir else ""})"` and copy the cache over; '
        "or pass a local checkpoint file (pretrained='/path/to/file.pt', --pretrained on the CLI); "
        "or allow fewclip to download (allow_download=True)."
    )


def _project_weights_path(arch: str) -> str:
    weights = PROJECT_WEIGHTS[arch]
    if not weights.path.is_file():
        raise WeightsNotFoundError(
            f"the project checkpoint {weights.path} is missing. It is committed to the "
            f"repository; rebuild it with `python -m fewclip.pretrain --arch {arch}`."
        )
    return str(weights.path)


# --------------------------------------------------------------------------- backbone


@dataclass
class Backbone:
    """A loaded CLIP-like model with what the rest of fewclip needs to use it."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> (3, H, W) tensor, the model's eval transform
    tokenizer: Callable  # list[str] -> (N, context_length) token ids
    arch: str
    pretrained: str | None  # the tag or file asked for; None for random init
    weights_file: str | None
    identity: str  # changes whenever the weights change; used in feature-cache keys
    device: torch.device
    precision: str
    embed_dim: int
    image_size: int
    context_length: int
    preprocess_cfg: dict = field(default_factory=dict)

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature, ``s = exp(logit_scale)`` (about 100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def is_pretrained(self) -> bool:
        return self.weights_file is not None

    @property
    def label(self) -> str:
        """What produced a number, for tables and figures."""
        if not self.is_pretrained:
            return f"{self.arch} (random init: numbers are not meaningful)"
        if self.arch in PROJECT_WEIGHTS:
            return f"{self.arch} (toy-scale CLIP pretrained by fewclip, not OpenAI CLIP)"
        return f"{self.arch}/{self.pretrained}"

    @property
    def is_vit(self) -> bool:
        return isinstance(self.model.visual, open_clip.transformer.VisionTransformer)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, d) L2-normalised float32 features."""
        with self.autocast():
            feats = self.model.encode_image(images.to(self.device))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """N strings -> (N, d) L2-normalised float32 text features."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            with self.autocast():
                out.append(self.model.encode_text(tokens).float())
        return F.normalize(torch.cat(out), dim=-1)

    def describe(self) -> dict:
        """A JSON-able summary for run records."""
        return {
            "arch": self.arch,
            "pretrained": self.pretrained,
            "identity": self.identity,
            "label": self.label,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "logit_scale": round(self.logit_scale, 4),
            "device": str(self.device),
            "precision": self.precision,
        }


def load_backbone(
    arch: str = DEFAULT_ARCH,
    pretrained: str | os.PathLike | None = "default",
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    cache_dir: str | None = None,
    allow_download: bool = False,
    init_seed: int = 0,
) -> Backbone:
    """Build an open_clip model and its transforms; see the module docstring for ``pretrained``.

    The model is put in eval mode with every parameter frozen; methods that train
    parts of it (prompt learners) add their own parameters.
    """
    weights = resolve_weights(arch, pretrained, cache_dir=cache_dir, allow_download=allow_download)
    dev = select_device(device)
    prec = select_precision(dev, precision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device="cpu"
        )
    model = model.to(dev).eval().requires_grad_(False)
    cfg = open_clip.get_model_config(arch)
    image_size = cfg["vision_cfg"].get("image_size", 224)
    if weights is None:
        identity = f"{arch}|random|seed{init_seed}"
    else:
        identity = f"{arch}|{file_digest(weights)[:16]}"
    return Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(arch),
        arch=arch,
        pretrained=None if weights is None else str(pretrained),
        weights_file=weights,
        identity=identity,
        device=dev,
        precision=prec,
        embed_dim=int(cfg["embed_dim"]),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        context_length=int(cfg["text_cfg"].get("context_length", 77)),
        preprocess_cfg=dict(model.visual.preprocess_cfg),
    )


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, half: bool = False) -> Path:
    """Write a model's state dict where :func:`load_backbone` can read it back.

    ``.safetensors`` or ``.pt`` by suffix; ``half=True`` stores floating tensors in fp16.
    Written atomically (temporary file, then rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily put a module in eval mode, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
