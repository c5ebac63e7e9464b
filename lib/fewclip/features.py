"""Feature cache: image features per (backbone, data, split, view) and text classifiers.

Every entry is stored under a key that names everything that affects its content: the
backbone's identity (architecture + hash of the weights file), the list of images (a
fingerprint of paths and labels, plus each file's identity: size and modification time, so
a repaired or replaced image is noticed, see :func:`files_identity`), the transform (test
transform, or augmented view ``v`` drawn with seed ``s``), the prompts for text
classifiers, and :data:`FEATURE_VERSION`.
Entries are written atomically (a temporary file named by its writer's host, process and a
random part, then a rename, so writers on several nodes sharing the folder never write one
file; the last rename wins and every entry is whole) and validated on load
(stored key, shape, finiteness, checksum); an entry that fails validation is recomputed,
with a warning, never silently used. Temporary files left by an interrupted writer are
removed when a cache on the same folder is next opened (:meth:`FeatureCache.clean_stale`).

Augmented views: random resized crop + horizontal flip, each view a full pass over the
few-shot images; view ``v`` of item ``i`` is drawn from a generator seeded by (seed, v, i),
so it is reproducible and independent of batch order. The crop's scale range is part of
the key: (0.5, 1) for the Tip-Adapter / DualAdapter family, (0.08, 1) for the Dassl family
(CLIP-Adapter), so both can sit in one cache. Each view entry also stores the raw
(pre-normalisation) feature norms, from which the official cache keys are built
(:meth:`fewclip.methods.base.FeatureData.cache_keys`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbones import Backbone
from .data.base import Datum, items_fingerprint
from .images import CACHE_CROP_SCALE, image_loader, train_transform
from .progress import tqdm

#: Bump when the way features are computed changes; old entries then stop matching.
FEATURE_VERSION = 1


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines a cached tensor."""

    kind: str  # "image" or "text"
    backbone: str  # Backbone.identity
    content: str  # image list fingerprint, or prompt fingerprint
    transform: str  # "test", "aug(scale=..,seed=..,view=..)", or the text pooling rule
    version: int = FEATURE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass
class ImageFeatures:
    """features (N, d) L2-normalised float32; labels (N,); valid (N,), False if unreadable;
    norms (N,) the encoder outputs' L2 norms before normalisation (None where not kept).
    Augmented views stack these: features (V, N, d), norms (V, N)."""

    features: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    norms: torch.Tensor | None = None

    @property
    def num_unreadable(self) -> int:
        return int((~self.valid).sum())

    def dropped(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the readable images only."""
        return self.features[self.valid], self.labels[self.valid]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(
            t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes()
        )
    return h.hexdigest()


#: Seconds after which any temporary file in the cache is taken as left by a dead writer.
STALE_TMP_S = 3600.0
_CLEANED: set[str] = set()


#: This host's name as it appears in temporary file names.
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname().split(".")[0]) or "host"


def _tmp_writer(name: str) -> tuple[str | None, int | None]:
    """The host and process that wrote a temporary file ``<entry>.<host>-<pid>-<id>.tmp``;
    (None, pid) for an older ``<entry>.<pid>.tmp``, (None, None) when unknown."""
    parts = name.split(".")
    if len(parts) < 3:
        return None, None
    writer = parts[-2]
    if writer.isdigit():
        return None, int(writer)
    host, _, rest = writer.partition("-")
    pid = rest.split("-")[0]
    return (host, int(pid)) if host and pid.isdigit() else (None, None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def files_identity(items: Sequence[Datum]) -> str:
    """Hash of each image file's (size, modification time in ns), "missing" where it cannot
    be read: changes when a file is repaired, replaced or damaged, without reading it."""
    h = hashlib.sha256()
    for d in items:
        try:
            st = os.stat(d.impath)
            h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(b"missing\n")
    return h.hexdigest()[:16]


class FeatureCache:
    """A folder of cached tensors; ``None`` as folder keeps nothing (always recompute)."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = 0
        self.misses = 0
        if self.root is not None and str(self.root.absolute()) not in _CLEANED:
            _CLEANED.add(str(self.root.absolute()))
            self.clean_stale()

    def clean_stale(self) -> int:
        """Remove temporary files of interrupted writes (``*.tmp``) under the folder: those
        of a process of this host that no longer exists once a minute old, any other once
        :data:`STALE_TMP_S` old (a writer elsewhere may still be at work). Returns the count."""
        if self.root is None or not self.root.is_dir():
            return 0
        removed, now = 0, time.time()
        for tmp in self.root.rglob("*.tmp"):
            try:
                age = now - tmp.stat().st_mtime
                host, pid = _tmp_writer(tmp.name)
                ours = host in (None, _HOST)
                dead = ours and pid is not None and pid != os.getpid() and not _pid_alive(pid)
                if age > STALE_TMP_S or (dead and age > 60):
                    tmp.unlink()
                    removed += 1
            except OSError:  # gone meanwhile, or not ours to remove
                pass
        return removed

    def path(self, key: FeatureKey) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key.backbone)
        return self.root / key.kind / safe / f"{key.digest()[:24]}.pt"

    def load(self, key: FeatureKey, expected_rows: int | None = None) -> dict | None:
        """The stored tensors for ``key``, or None if absent or invalid (invalid: warned)."""
        if self.root is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            problem = self._problem(entry, key, expected_rows)
        except Exception as e:  # a truncated or foreign file
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            warnings.warn(
                f"feature cache entry {path} is invalid ({problem}); recomputing", stacklevel=2
            )
            return None
        self.hits += 1
        return entry["tensors"]

    @staticmethod
    def _problem(entry: dict, key: FeatureKey, expected_rows: int | None) -> str | None:
        if not isinstance(entry, dict) or "tensors" not in entry or "key" not in entry:
            return "not a fewclip cache entry"
        if entry["key"] != asdict(key):
            return "stored key differs"
        tensors = entry["tensors"]
        if entry.get("checksum") != _checksum(tensors):
            return "checksum mismatch"
        feats = tensors.get("features")
        if feats is None or not torch.isfinite(feats).all():
            return "missing or non-finite features"
        if expected_rows is not None and feats.shape[0] != expected_rows:
            return f"{feats.shape[0]} rows, expected {expected_rows}"
        return None

    def save(self, key: FeatureKey, tensors: dict[str, torch.Tensor]) -> None:
        """Atomic write: a killed writer leaves at most a ``*.tmp`` file, never a valid entry."""
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        entry = {"key": asdict(key), "tensors": tensors, "checksum": _checksum(tensors)}
        # one name per writer (host, process, call): two nodes or threads writing the same
        # entry at once each write their own file, and the last rename wins
        tmp = path.with_name(f"{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            torch.save(entry, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


# --------------------------------------------------------------------------- images


def encode_with_norms(
    backbone: Backbone, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) -> ((B, d) normalised features, (B,) norms of the raw encoder output).

    The same computation as :meth:`Backbone.encode_images`, keeping the norm it divides by.
    """
    with backbone.autocast():
        raw = backbone.model.encode_image(images.to(backbone.device))
    raw = raw.float()
    return F.normalize(raw, dim=-1), raw.norm(dim=-1)


@torch.no_grad()
def encode_items(
    backbone: Backbone,
    items: Sequence[Datum],
    transform,
    *,
    seed: int | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    desc: str = "features",
    progress: bool = True,
) -> ImageFeatures:
    """Encode images in batches with a progress bar; unreadable images get ``valid = False``
    (and a zero feature and norm)."""
    loader = image_loader(
        items,
        transform,
        backbone.image_size,
        batch_size=batch_size,
        seed=seed,
        num_workers=num_workers,
    )
    feats = torch.zeros(len(items), backbone.embed_dim)
    labels = torch.tensor([d.label for d in items], dtype=torch.long)
    valid = torch.zeros(len(items), dtype=torch.bool)
    norms = torch.zeros(len(items))
    for images, _, index, ok in tqdm(loader, desc=desc, disable=not progress, leave=False):
        f, n = encode_with_norms(backbone, images)
        feats[index], norms[index] = f.cpu(), n.cpu()
        valid[index] = ok
    feats[~valid] = 0.0
    norms[~valid] = 0.0
    if not valid.all():
        warnings.warn(f"{int((~valid).sum())} unreadable image(s) skipped in {desc}", stacklevel=2)
    return ImageFeatures(feats, labels, valid, norms)


def _image_key(backbone: Backbone, items: Sequence[Datum], transform: str) -> FeatureKey:
    content = f"{items_fingerprint(items, [])}|files:{files_identity(items)}"
    return FeatureKey("image", backbone.identity, content, transform)


def image_features(
    backbone: Backbone,
    items: Sequence[Datum],
    cache: FeatureCache,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    desc: str = "features",
    progress: bool = True,
) -> ImageFeatures:
    """(N, d) features of ``items`` under the backbone's test transform, cached."""
    key = _image_key(backbone, items, "test")
    stored = cache.load(key, expected_rows=len(items))
    if stored is not None:
        return ImageFeatures(stored["features"], stored["labels"], stored["valid"])
    cache.misses += 1
    out = encode_items(
        backbone,
        items,
        backbone.preprocess,
        batch_size=batch_size,
        num_workers=num_workers,
        desc=desc,
        progress=progress,
    )
    cache.save(key, {"features": out.features, "labels": out.labels, "valid": out.valid})
    return out


def augmented_transform(backbone: Backbone, scale: tuple[float, float] = CACHE_CROP_SCALE):
    cfg = backbone.preprocess_cfg
    return train_transform(backbone.image_size, cfg["mean"], cfg["std"], scale=scale)


def augmented_features(
    backbone: Backbone,
    items: Sequence[Datum],
    cache: FeatureCache,
    *,
    views: int = 10,
    seed: int = 0,
    scale: tuple[float, float] = CACHE_CROP_SCALE,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
) -> ImageFeatures:
    """(V, N, d) features and (V, N) raw norms of ``views`` augmented passes over ``items``
    (random resized crop with ``scale``, flip); each view cached alone under a key naming
    the scale, the seed and the view, so asking for more views later reuses the ones
    already computed. An entry written before norms were stored is recomputed."""
    transform = augmented_transform(backbone, scale)
    per_view = []
    for v in tqdm(range(views), desc="augmented views", disable=not progress, leave=False):
        tag = f"aug(rrc={scale[0]}-{scale[1]},flip,seed={seed},view={v})"
        key = _image_key(backbone, items, tag)
        stored = cache.load(key, expected_rows=len(items))
        if stored is not None and "norms" not in stored:
            stored = None  # an entry from before the raw norms were kept
        if stored is None:
            cache.misses += 1
            out = encode_items(
                backbone,
                items,
                transform,
                seed=seed * 1009 + v,
                batch_size=batch_size,
                num_workers=num_workers,
                desc=f"view {v + 1}/{views}",
                progress=progress,
            )
            stored = {
                "features": out.features,
                "labels": out.labels,
                "valid": out.valid,
                "norms": out.norms,
            }
            cache.save(key, stored)
        per_view.append(stored)
    return ImageFeatures(
        torch.stack([s["features"] for s in per_view]),
        per_view[0]["labels"],
        torch.stack([s["valid"] for s in per_view]).all(0),
        torch.stack([s["norms"] for s in per_view]),
    )


# --------------------------------------------------------------------------- text


def _prompt_fingerprint(prompts: Sequence[Sequence[str]]) -> str:
    return hashlib.sha256(json.dumps([list(p) for p in prompts]).encode()).hexdigest()[:16]


def prompt_classifier(
    backbone: Backbone, prompts: Sequence[Sequence[str]], cache: FeatureCache
) -> torch.Tensor:
    """(d, C) classifier: for class c, encode every prompt in ``prompts[c]``, normalise,
    average, normalise again (CLIP's prompt-ensembling rule). Cached by the prompt text."""
    key = FeatureKey("text", backbone.identity, _prompt_fingerprint(prompts), "mean-of-normalised")
    stored = cache.load(key, expected_rows=len(prompts))
    if stored is not None:
        return stored["features"].T.contiguous()
    cache.misses += 1
    flat = [p for group in prompts for p in group]
    if any(len(group) == 0 for group in prompts):
        raise ValueError("every class needs at least one prompt")
    encoded = backbone.encode_text(flat).cpu()
    columns, start = [], 0
    for group in prompts:
        columns.append(F.normalize(encoded[start : start + len(group)].mean(0), dim=-1))
        start += len(group)
    classifier = torch.stack(columns)  # (C, d)
    cache.save(key, {"features": classifier})
    return classifier.T.contiguous()


def template_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], cache: FeatureCache
) -> torch.Tensor:
    """(d, C) zero-shot classifier W from templates such as ``"a photo of a {}."``."""
    if not templates:
        raise ValueError("no templates given")
    return prompt_classifier(
        backbone, [[t.format(c) for t in templates] for c in classnames], cache
    )
