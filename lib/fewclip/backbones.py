"""Backbones: any open_clip model by architecture + pretrained tag, or a local checkpoint file.

    bb = load_backbone("RN50", "openai")                     # open_clip tag, from the local cache
    bb = load_backbone("ViT-B-16", "/weights/vit_b16.pt")    # a local checkpoint file
    bb = load_backbone("tiny-emoji-rn")                      # fewclip's own tiny CLIP
    bb = load_backbone("fewclip-test-vit", None)             # random init (tests only)

Offline by default: a pretrained tag is resolved from the local cache only, and a missing
weight raises :class:`WeightsNotFoundError` naming the file and how to get it. Pass
``allow_download=True`` to let open_clip fetch it.

Activation (QuickGELU): OpenAI's CLIP weights were trained with QuickGELU,
``x * sigmoid(1.702 x)``, while open_clip's plain architectures (``RN50``, ``ViT-B-16``) use
``nn.GELU``; open_clip's pretrained registry marks such tags ``quick_gelu=True``. Because the
tag is resolved here to a file, open_clip would no longer see it, so :func:`load_backbone`
decides the activation itself (:func:`decide_quick_gelu`): a ``-quickgelu`` architecture name,
a tag marked ``quick_gelu`` (``openai``, ``yfcc15m``, ...), the cached file of such a tag, or
an OpenAI-format checkpoint file (a TorchScript archive as OpenAI distributes, or a state dict
with its ``input_resolution`` entry) give QuickGELU; ``quick_gelu=True/False`` overrides.

The project registers its own architectures (JSON files in ``fewclip/model_configs``) with
open_clip, so they are built by open_clip's factory like any other model; the project's
pretrained weights live in ``fewclip/weights`` and are listed in :data:`PROJECT_WEIGHTS`.

A backbone's own words (:class:`PromptWords`, ``Backbone.words``): the class-name template
its pretraining captions used and the init phrase prompt learners start from. A checkpoint
declares them in the JSON beside it, ``<checkpoint stem>.config.json``, under
``"prompt_words"``::

    {"prompt_words": {"template": "an emoji of {}.", "init": "an emoji of"}}

(fewclip's tiny models do: they were pretrained on "an emoji of {name}." captions, see
:mod:`fewclip.pretrain`). A checkpoint without it, an open_clip tag (OpenAI, LAION) and a
random init speak OpenAI CLIP's words, ``"a photo of a {}."`` / ``"a photo of a"``;
``load_backbone(..., prompt_words=...)`` overrides both. Prompt learners resolve their init
option with :func:`init_phrase` (``"backbone"``: these words, ``"official"``: OpenAI's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"


class _LazyOpenClip:
    """``open_clip``, imported (and given the project's model configs) on first use: its
    import (with torchvision's) is seconds that a notebook or CLI call without a model
    need not pay. Attribute reads and writes go to the real module (monkeypatch works)."""

    def _module(self):
        import open_clip as module

        if not getattr(module, "_fewclip_configs", False):
            module.add_model_config(CONFIG_DIR)
            module._fewclip_configs = True
        return module

    def __getattr__(self, name: str):
        return getattr(self._module(), name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._module(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._module(), name)


open_clip = _LazyOpenClip()

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


class InvalidCheckpointError(ValueError):
    """The weights file exists but is not a checkpoint that can be loaded safely."""


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


# --------------------------------------------------------------------------- activation

#: Preprocessing entries of an open_clip tag (``create_model_and_transforms(image_<key>=)``).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")

#: Entries of OpenAI's TorchScript state dicts that are not weights.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip archive (OpenAI's released ``RN50.pt``, ``ViT-B-16.pt``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def is_openai_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a checkpoint file is in OpenAI's format (so its weights expect QuickGELU).

    OpenAI distributes TorchScript archives; their state dict (and a plain state dict saved
    from one) carries ``input_resolution`` / ``context_length`` / ``vocab_size`` entries,
    which open_clip's own checkpoints never have. Reads only the archive index or the keys.
    """
    path = str(path)
    if is_torchscript_archive(path):
        return True
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
    else:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # not a zip-format state dict: let the loader report it
            return False
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        keys = set(state) if isinstance(state, dict) else set()
    return any(k in keys or f"module.{k}" in keys for k in OPENAI_EXTRA_KEYS)


def tag_of_file(arch: str, path: str | os.PathLike) -> str | None:
    """The open_clip tag of ``arch`` whose cached download ``path`` is, if any.

    Matches the file name of the tag's URL (``~/.cache/clip/RN50.pt``) or the tag's
    Hugging Face repository in the cache path (``models--timm--resnet50_clip.openai``).
    """
    path = os.path.abspath(path)  # not resolved: the cache's own name, not a symlink target
    for tag in open_clip.list_pretrained_tags_by_model(arch):
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        url, hub = cfg.get("url", ""), cfg.get("hf_hub", "")
        if url and os.path.basename(path) == os.path.basename(url):
            return tag
        repo = hub.strip("/").split("/")
        if len(repo) >= 2 and f"models--{repo[0]}--{repo[1]}" in path:
            return tag
    return None


def weights_tag(
    arch: str, pretrained: str | os.PathLike | None, weights_file: str | None
) -> str | None:
    """The open_clip tag the weights come from: ``pretrained`` itself when it is a tag
    (``default`` means ``openai`` outside the project's models), else the tag whose cached
    download ``weights_file`` is; None for random init, project weights and other files."""
    if weights_file is None or arch in PROJECT_WEIGHTS:
        return None
    tag = "openai" if str(pretrained) == "default" else str(pretrained)
    if open_clip.get_pretrained_cfg(arch, tag):
        return tag
    return tag_of_file(arch, weights_file)


def decide_quick_gelu(
    arch: str,
    pretrained: str | os.PathLike | None,
    weights_file: str | None,
    quick_gelu: bool | None = None,
) -> tuple[bool, str]:
    """Which activation open_clip must build ``arch`` with for these weights, and why.

    Returns (QuickGELU?, reason). Order: the user's ``quick_gelu``; a ``-quickgelu``
    architecture; the open_clip tag's ``quick_gelu`` flag (as open_clip's registry states it
    for ``openai`` etc.); the tag whose cached file ``weights_file`` is; an OpenAI-format file.
    """
    cfg = open_clip.get_model_config(arch) or {}
    if quick_gelu is not None:
        return bool(quick_gelu), "quick_gelu set by the user"
    if cfg.get("quick_gelu", False):
        return True, f"architecture {arch} is defined with QuickGELU"
    if weights_file is None:
        return False, "random init: the architecture's own activation"
    tag = weights_tag(arch, pretrained, weights_file)
    if tag:
        flag = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        return flag, f"open_clip's registry: {arch}/{tag} has quick_gelu={flag}"
    if arch not in PROJECT_WEIGHTS and is_openai_checkpoint(weights_file):
        return True, "OpenAI-format checkpoint file (OpenAI's weights use QuickGELU)"
    return False, "checkpoint file in open_clip's format: the architecture's own activation"


def _load_openai_archive(model: torch.nn.Module, path: str) -> None:
    """Load OpenAI's TorchScript archive into an open_clip model (open_clip's own loader
    refuses TorchScript under torch's ``weights_only`` default)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated")
        state = torch.jit.load(path, map_location="cpu").state_dict()
    for key in OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    from open_clip.factory import resize_pos_embed

    resize_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def weights_identity(
    arch: str, pretrained: str | os.PathLike | None, quick_gelu: bool | None = None
) -> str:
    """:attr:`Backbone.identity` without building the model (run keys, feature caches).

    ``arch|digest16`` (``arch|random|seed0`` for random init), plus ``|quickgelu`` or
    ``|gelu`` when the activation differs from the architecture's own definition.
    """
    weights = resolve_weights(arch, pretrained)
    return _identity(arch, weights, pretrained, quick_gelu)


def _identity(
    arch: str,
    weights: str | None,
    pretrained: str | os.PathLike | None,
    quick_gelu: bool | None,
    init_seed: int = 0,
) -> str:
    base = (
        f"{arch}|random|seed{init_seed}"
        if weights is None
        else f"{arch}|{file_digest(weights)[:16]}"
    )
    quick, _ = decide_quick_gelu(arch, pretrained, weights, quick_gelu)
    native = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    if quick != native:
        base += "|quickgelu" if quick else "|gelu"
    return base


# --------------------------------------------------------------------------- prompt words


@dataclass(frozen=True)
class PromptWords:
    """How a backbone was spoken to in pretraining.

    template: the class-name template, ``{}`` standing for the class name ("a photo of a {}.").
    init:     the init phrase of prompt learners, whose class prompts read
              ``"{init} {class}."`` ("a photo of a").
    source:   where the words come from (a config file, a default), for run notes.
    """

    template: str = "a photo of a {}."
    init: str = "a photo of a"
    source: str = "OpenAI CLIP's words (the default of a checkpoint that declares none)"

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or self.template.count("{}") != 1:
            raise ValueError(
                f"prompt_words template {self.template!r} ({self.source}) must contain '{{}}' "
                "exactly once, where the class name goes, e.g. 'an emoji of {}.'"
            )
        if not isinstance(self.init, str) or not self.init.strip():
            raise ValueError(
                f"prompt_words init {self.init!r} ({self.source}) must be a non-empty phrase, "
                "e.g. 'an emoji of'"
            )

    def prompts(self, classnames: Sequence[str]) -> list[str]:
        """The template filled with each class name."""
        return [self.template.format(name) for name in classnames]

    def as_dict(self) -> dict[str, str]:
        return {"template": self.template, "init": self.init}


#: OpenAI CLIP's words, as the official prompt-learning codes speak to it (and LAION's
#: open_clip weights, trained on web alt-texts, are spoken to alike).
OPENAI_WORDS = PromptWords()
#: Option value of a prompt learner's init phrase: the backbone's own words.
BACKBONE_WORDS = "backbone"
#: Option value of a prompt learner's init phrase: the official codes' ("a photo of a").
OFFICIAL_WORDS = "official"


def words_file(weights_file: str | os.PathLike) -> Path:
    """The JSON beside a checkpoint that may declare its words: ``<stem>.config.json``."""
    return Path(weights_file).with_suffix(".config.json")


def read_prompt_words(weights_file: str | os.PathLike | None) -> PromptWords:
    """A checkpoint's own words: ``"prompt_words"`` of the JSON beside it
    (:func:`words_file`), else :data:`OPENAI_WORDS` (also for random init)."""
    if weights_file is None:
        return OPENAI_WORDS
    config = words_file(weights_file)
    if not config.is_file():
        return OPENAI_WORDS
    try:
        entry = json.loads(config.read_text()).get("prompt_words")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(
            f"{config} is not a JSON object ({e}); fix it or remove it (it is read for the "
            "checkpoint's prompt_words)"
        ) from None
    if entry is None:
        return OPENAI_WORDS
    if not isinstance(entry, dict) or set(entry) - {"template", "init"}:
        raise ValueError(
            f"prompt_words in {config} must be an object with 'template' and 'init', e.g. "
            '{"template": "an emoji of {}.", "init": "an emoji of"}'
        )
    inside = config.parent.resolve() == WEIGHTS_DIR.resolve()
    return PromptWords(**entry, source=f"fewclip/weights/{config.name}" if inside else str(config))


def as_prompt_words(words: PromptWords | dict | None, source: str) -> PromptWords | None:
    """``load_backbone``'s ``prompt_words`` argument as :class:`PromptWords` (None stays None)."""
    if words is None or isinstance(words, PromptWords):
        return words
    if not isinstance(words, dict) or set(words) - {"template", "init"}:
        raise ValueError(
            "prompt_words must be a PromptWords or a dict with 'template' and 'init', e.g. "
            '{"template": "an emoji of {}.", "init": "an emoji of"}'
        )
    return PromptWords(**words, source=source)


def read_pretrain_crop(weights_file: str | os.PathLike | None) -> float | None:
    """The smallest random-crop area of a checkpoint's pretraining (``"crop_scale_min"`` of
    the JSON beside it, which fewclip's pretraining writes), None where it declares none
    (OpenAI and LAION weights, random init, a checkpoint without the entry)."""
    if weights_file is None or not words_file(weights_file).is_file():
        return None
    config = words_file(weights_file)
    try:
        value = json.loads(config.read_text()).get("crop_scale_min")
    except (json.JSONDecodeError, AttributeError):
        return None  # read_prompt_words names the broken file
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"crop_scale_min in {config} must be a number in (0, 1], got {value!r}")
    return float(value)


def crop_key(arch: str, pretrained: str | os.PathLike | None) -> str:
    """What a run key adds for a method whose augmentation follows the backbone's
    pretraining crop: ``""`` where the checkpoint declares none (keys as before), else
    ``"|crop:<min>"``. Reads only the JSON."""
    value = read_pretrain_crop(resolve_weights(arch, pretrained))
    return "" if value is None else f"|crop:{value:g}"


def init_phrase(words: PromptWords, init: str | None) -> str | None:
    """What a prompt learner's init option means for a backbone whose words are ``words``.

    ``"backbone"``: the backbone's init phrase (``words.init``); ``"official"``: the
    official codes' "a photo of a" (OpenAI CLIP's); None: None (random context); any other
    phrase: itself. Every prompt method resolves its init option through this function.
    """
    if init == BACKBONE_WORDS:
        return words.init
    if init == OFFICIAL_WORDS:
        return OPENAI_WORDS.init
    return init


def phrase_template(words: PromptWords, init: str | None) -> str:
    """The class-name template that goes with an init option: ``"{phrase} {}."`` for a
    phrase (what a prompt learner initialised from it computes at step 0), the backbone's
    own template for ``"backbone"`` and for None (random context)."""
    if init in (None, BACKBONE_WORDS):
        return words.template
    return f"{init_phrase(words, init).replace('_', ' ')} {{}}."


def words_key(arch: str, pretrained: str | os.PathLike | None) -> str:
    """What a run key adds for a method that reads the backbone's words: ``""`` for OpenAI's
    words (keys as before they were configurable), else ``"|words:<template>|<init>"``, so
    a result made with other words is never served for these. Reads only the JSON."""
    words = read_prompt_words(resolve_weights(arch, pretrained))
    if words.as_dict() == OPENAI_WORDS.as_dict():
        return ""
    return f"|words:{words.template}|{words.init}"


def words_note(method: str, words: PromptWords, init: str | None) -> str:
    """One line for a run's notes: which init phrase a prompt method used, and why."""
    phrase = init_phrase(words, init)
    if phrase is None:
        return f"{method}: random context (class template {words.template!r}, {words.source})"
    if init == BACKBONE_WORDS:
        return f"{method}: init phrase {phrase!r}, the backbone's own words ({words.source})"
    return f"{method}: init phrase {phrase!r}, set by the options"


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
    quick_gelu: bool = False  # the activation the model was built with (see decide_quick_gelu)
    activation_reason: str = ""
    words: PromptWords = OPENAI_WORDS  # its own prompt words (see PromptWords)
    pretrain_crop_min: float | None = None  # its pretraining's smallest crop area, if declared

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
            "activation": "QuickGELU" if self.quick_gelu else "GELU",
            "prompt_words": self.words.as_dict(),
            **(
                {"pretrain_crop_min": self.pretrain_crop_min}
                if self.pretrain_crop_min is not None
                else {}
            ),
        }


@contextlib.contextmanager
def _checkpoint_errors(weights: str | None, arch: str) -> Iterator[None]:
    """A weights file that cannot be read becomes one clear error naming it; never torch's
    advice to retry with ``weights_only=False`` (that would run the file's code)."""
    try:
        yield
    except Exception as e:
        if weights is None or isinstance(e, (UnknownBackboneError, WeightsNotFoundError)):
            raise
        text = str(e)
        lines = text.strip().splitlines()
        reason = "not a readable tensor file" if "weights_only" in text or not lines else lines[0]
        raise InvalidCheckpointError(
            f"{weights} is not a checkpoint fewclip can load for {arch} ({type(e).__name__}: "
            f"{reason[:160]}); give a .safetensors file or a torch state dict of {arch}"
        ) from None


def load_backbone(
    arch: str = DEFAULT_ARCH,
    pretrained: str | os.PathLike | None = "default",
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    cache_dir: str | None = None,
    allow_download: bool = False,
    init_seed: int = 0,
    quick_gelu: bool | None = None,
    prompt_words: PromptWords | dict | None = None,
) -> Backbone:
    """Build an open_clip model and its transforms; see the module docstring for ``pretrained``.

    ``prompt_words`` (a :class:`PromptWords` or ``{"template": ..., "init": ...}``) sets the
    backbone's own words; None reads them from the JSON beside the checkpoint
    (:func:`read_prompt_words`), OpenAI CLIP's when it declares none.

    The model is built as open_clip builds it for the tag: QuickGELU where the weights were
    trained with it (``quick_gelu=None`` decides, see :func:`decide_quick_gelu`;
    ``True``/``False`` overrides), and the tag's preprocessing (mean, std, interpolation,
    resize mode). It is put in eval mode with every parameter frozen; methods that train
    parts of it (prompt learners) add their own parameters.
    """
    weights = resolve_weights(arch, pretrained, cache_dir=cache_dir, allow_download=allow_download)
    words = as_prompt_words(prompt_words, "set by load_backbone(prompt_words=...)")
    if words is None:
        words = read_prompt_words(weights)
    dev = select_device(device)
    prec = select_precision(dev, precision)
    with _checkpoint_errors(weights, arch):
        quick, reason = decide_quick_gelu(arch, pretrained, weights, quick_gelu)
    native = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    tag = weights_tag(arch, pretrained, weights)
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    # what open_clip merges from the tag's registry entry when it is given the tag
    preprocess = {f"image_{k}": tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg}
    archive = weights is not None and is_torchscript_archive(weights)
    with (
        torch.random.fork_rng(devices=[]),
        warnings.catch_warnings(),
        _checkpoint_errors(weights, arch),
    ):
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        torch.manual_seed(init_seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=None if archive else weights,
            device="cpu",
            **preprocess,
            **({"quick_gelu": quick} if quick != native else {}),
        )
    if archive:
        _load_openai_archive(model, weights)
    model = model.to(dev).eval().requires_grad_(False)
    cfg = open_clip.get_model_config(arch)
    image_size = cfg["vision_cfg"].get("image_size", 224)
    return Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(arch),
        arch=arch,
        pretrained=None if weights is None else str(pretrained),
        weights_file=weights,
        identity=_identity(arch, weights, pretrained, quick_gelu, init_seed),
        device=dev,
        precision=prec,
        embed_dim=int(cfg["embed_dim"]),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        context_length=int(cfg["text_cfg"].get("context_length", 77)),
        preprocess_cfg=dict(model.visual.preprocess_cfg),
        quick_gelu=quick,
        activation_reason=reason,
        words=words,
        pretrain_crop_min=read_pretrain_crop(weights),
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
