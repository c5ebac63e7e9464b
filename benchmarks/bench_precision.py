"""Measurement: Tip-Adapter-F trained in fp32 (ours) versus the official fp16.

The official Tip-Adapter-F makes its learnable keys an ``nn.Linear`` cast to CLIP's dtype
(fp16 on GPU) and trains it with ``torch.optim.AdamW(lr=1e-3, eps=1e-4)``, so the AdamW
moments are fp16 too. A second moment ``v = (1 - 0.999) g^2`` underflows to 0 in fp16 when
|g| is below about 7.7e-3; the step is then ``lr * m_hat / (sqrt(v_hat) + eps)`` with
``sqrt(v_hat) = 0``, i.e. ``lr * g / 1e-4`` instead of about ``lr * sign(g)``: much larger
for the small gradients of a cache entry. (DualAdapter's official residuals are fp16
under AdamW in the same way; not measured here.)

Both sides run the same loop on the same cached features (the run layer's
:func:`fewclip.runner.feature_data`): the Tip-Adapter-F forward
``s f W + alpha exp(-beta (1 - f K^T)) L`` at the method's initial (beta, alpha) with the
keys K learnable, AdamW (lr 1e-3, eps 1e-4, weight decay 0.01), cosine per iteration,
batch 256, the method's epochs, epoch e on augmented view e % V; fp16 = keys, features and
the forward in half precision (the official code's dtype), the loss in fp32. Printed per
seed: the fraction of second-moment entries that are exactly 0 after the first step, the
mean |key change| of the first step, fp16 over fp32, and the test accuracy after the last
epoch at the initial (beta, alpha) (no search, to isolate the training).

    python benchmarks/bench_precision.py
    python benchmarks/bench_precision.py --dataset fashion_mnist --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from fewclip.config import RunConfig
from fewclip.data import load_dataset
from fewclip.features import FeatureCache
from fewclip.methods import get_method
from fewclip.methods.base import FeatureData, accuracy
from fewclip.methods.tip_adapter import tip_defaults
from fewclip.runner import cached_backbone, feature_data, sample_split, test_features


def tip_logits(f, keys, values, classifier, s, beta, alpha):
    """Tip-Adapter's logits in the dtype of ``keys``: (N, d) -> (N, C) float32."""
    f = f.to(keys.dtype)
    affinity = f @ keys.T
    cache = torch.exp(-beta * (1 - affinity)) @ values.to(keys.dtype)
    return (s * f @ classifier.to(keys.dtype) + alpha * cache).float()


def train(data: FeatureData, dtype, seed: int, epochs: int, beta: float, alpha: float):
    """Tip-Adapter-F's key training in ``dtype``; returns (keys, zero fraction of v after
    the first step, mean |delta K| of the first step)."""
    keys = torch.nn.Parameter(data.cache_keys.clone().to(dtype))
    values = F.one_hot(data.train_labels, data.num_classes).float()
    w, s = data.classifiers["positive"], data.logit_scale
    optimizer = torch.optim.AdamW([keys], lr=1e-3, eps=1e-4, weight_decay=0.01)
    num, batch = data.train_labels.shape[0], 256
    steps = (num + batch - 1) // batch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    zero_fraction = first_step = None
    for epoch in range(epochs):
        features = data.view(epoch)
        order = torch.randperm(num, generator=generator)
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            before = keys.detach().float().clone()
            logits = tip_logits(features[idx], keys, values, w, s, beta, alpha)
            loss = F.cross_entropy(logits, data.train_labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if zero_fraction is None:
                v = optimizer.state[keys]["exp_avg_sq"]
                zero_fraction = float((v == 0).float().mean())
                first_step = float((keys.detach().float() - before).abs().mean())
    return keys.detach(), zero_fraction, first_step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny-emoji-rn")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--dataset", default="emoji_openmoji_subcategory")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default="cache")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    base = RunConfig(
        method="tip_adapter_f",
        dataset=args.dataset,
        backbone=args.backbone,
        pretrained=args.pretrained,
        shots=args.shots,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        progress=False,
    )
    backbone = cached_backbone(base)
    dataset = load_dataset(args.dataset, args.data_root)
    cache = FeatureCache(args.cache_dir)
    method = get_method("tip_adapter_f", dataset=args.dataset)
    epochs = tip_defaults(args.dataset).epochs
    print(f"{backbone.label}; {args.dataset}, {args.shots} shots, {epochs} epochs")
    print("seed | v == 0 after step 1 (fp32 / fp16) | first step fp16/fp32 | test acc fp32 / fp16")
    accs = {torch.float32: [], torch.float16: []}
    for seed in args.seeds:
        config = base.replace(seed=seed)
        data, _ = feature_data(backbone, dataset, sample_split(dataset, config), config, cache)
        test_f, test_y, _ = test_features(backbone, dataset.test, config, cache, "test")
        beta, alpha = method._inits(data)
        row = {}
        for dtype in (torch.float32, torch.float16):
            keys, zeros, step = train(data, dtype, seed, epochs, beta, alpha)
            values = F.one_hot(data.train_labels, data.num_classes).float()
            logits = tip_logits(
                test_f, keys, values, data.classifiers["positive"], data.logit_scale, beta, alpha
            )
            acc = accuracy(logits, test_y)
            accs[dtype].append(acc)
            row[dtype] = (zeros, step, acc)
        (z32, s32, a32), (z16, s16, a16) = row[torch.float32], row[torch.float16]
        print(f"{seed} | {z32:.1%} / {z16:.1%} | {s16 / s32:.1f}x | {a32:.2f}% / {a16:.2f}%")
    m32, m16 = (sum(accs[k]) / len(accs[k]) for k in (torch.float32, torch.float16))
    print(
        f"mean test acc over seeds {args.seeds}: fp32 {m32:.2f}%, fp16 {m16:.2f}% "
        f"(fp16 - fp32 {m16 - m32:+.2f})"
    )


if __name__ == "__main__":
    main()
