"""Metrics: accuracy per class, base-to-new harmonic mean, APEX's difficulty measures.

All accuracies are percentages. Shapes: ``N`` images, ``C`` classes, ``d`` feature dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of (N, C) logits against (N,) labels."""
    return (logits.argmax(-1) == labels).float().mean().item() * 100.0


def per_class_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(C,) top-1 accuracy in percent per true class; NaN for a class with no image."""
    labels = labels.to(logits.device)
    correct = (logits.argmax(-1) == labels).float()
    hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes).float()
    out = hits / counts.clamp_min(1) * 100.0
    out[counts == 0] = float("nan")
    return out.cpu()


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2 b n / (b + n) of base and new accuracy (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def relative_transfer_difficulty(num_classes: int, zero_shot_accuracy: float) -> float:
    """APEX's RTD = (1 / C) / acc_zero_shot, both as fractions (``zero_shot_accuracy`` in
    percent). 1 means zero-shot CLIP is at chance; larger is harder (inf at 0% accuracy)."""
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    acc = zero_shot_accuracy / 100.0
    return math.inf if acc == 0 else (1.0 / num_classes) / acc


def class_separability(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How well image features separate the classes, from cosine similarities.

    features (N, d) (normalised here), labels (N,). Returns
    ``intra``: mean cosine over pairs of distinct images of the same class,
    ``inter``: mean cosine over pairs of images of different classes,
    ``ratio``: intra / inter (larger = more separable; 1 = no class structure),
    ``inverse``: inter / intra (APEX's alternative reading; smaller = more separable).
    Computed from per-class sums, so memory is (C, d), not (N, N).
    """
    f = F.normalize(features.float(), dim=-1)
    labels = labels.to(f.device).long()
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    sums = torch.zeros(num_classes, f.shape[1], device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).float()
    # sum over ordered pairs (i, j), i != j, same class: |S_c|^2 - n_c (each |f| = 1)
    same = (sums.pow(2).sum(1) - counts).sum()
    same_pairs = (counts * (counts - 1)).sum()
    total = f.sum(0).pow(2).sum() - f.shape[0]
    total_pairs = f.shape[0] * (f.shape[0] - 1)
    diff, diff_pairs = total - same, total_pairs - same_pairs
    if same_pairs == 0 or diff_pairs == 0:
        raise ValueError("separability needs two classes and a class with two images")
    intra = float(same / same_pairs)
    inter = float(diff / diff_pairs)
    return {"intra": intra, "inter": inter, "ratio": intra / inter, "inverse": inter / intra}


def encode_correct(logits: torch.Tensor, labels: torch.Tensor) -> str:
    """Per-test-image correctness of (N, C) logits against (N,) labels, compactly:
    ``"<N>:<base64 of the bits packed 8 per byte, test order>"`` (about N / 6 characters).
    Decode with :func:`decode_correct`; :mod:`fewclip.evidence` bootstraps over it."""
    import base64

    import numpy as np

    bits = (logits.argmax(-1) == labels.to(logits.device)).cpu().numpy().astype(bool)
    return f"{bits.size}:" + base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def decode_correct(text: str):
    """The (N,) boolean numpy array that :func:`encode_correct` wrote."""
    import base64

    import numpy as np

    n, _, data = text.partition(":")
    packed = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    return np.unpackbits(packed, count=int(n)).astype(bool)


def encode_labels(labels: torch.Tensor) -> str:
    """The (N,) test labels in test order, compactly: ``"<N>:<base64 of the zlib-compressed
    little-endian int32 labels>"`` (a few characters per class when the test set is sorted by
    class). Decode with :func:`decode_labels`; :mod:`fewclip.evidence` resamples new
    classes by class with them."""
    import base64
    import zlib

    values = labels.detach().cpu().to(torch.int64).numpy().astype("<i4")
    packed = zlib.compress(values.tobytes(), 9)
    return f"{values.size}:" + base64.b64encode(packed).decode("ascii")


def decode_labels(text: str):
    """The (N,) int numpy array that :func:`encode_labels` wrote."""
    import base64
    import zlib

    import numpy as np

    n, _, data = text.partition(":")
    values = np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype="<i4")
    if values.size != int(n):
        raise ValueError(f"encoded labels hold {values.size} values, their header says {n}")
    return values.astype(np.int64)


def labels_digest(labels: torch.Tensor) -> str:
    """A short hash of the test labels in test order: two records with the same digest (and
    dataset fingerprint) scored the same test images in the same order."""
    import hashlib

    data = labels.detach().cpu().to(torch.int64).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
