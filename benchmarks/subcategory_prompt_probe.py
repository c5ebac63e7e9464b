"""Is zero-shot on a subcategory task limited by the image side or by the class prompts?

    python benchmarks/subcategory_prompt_probe.py --arch tiny-emoji-rn \\
        [--checkpoint PATH] [--task emoji_openmoji_subcategory] [--data-root data]

Classifies the task's test images three ways with the same image features and prints the
top-1 accuracy of each:

- ``task prompts``: each class's text feature is the mean of the task's templates with the
  subcategory name (what ``method="zero_shot"`` does);
- ``one template``: "a {subcategory} emoji." alone;
- ``mean of names``: each class is the mean of "an emoji of {name}." over the corpus names
  of that subcategory (names the model learnt in pretraining; not a zero-shot method, a
  probe: if it scores far above the task prompts, the images are told apart and the
  subcategory words are what the model does not know).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fewclip.backbones import load_backbone
from fewclip.features import FeatureCache, prompt_classifier
from fewclip.offline.tasks import EMOJI_TEMPLATES, split_file
from fewclip.pretrain.data import group_name, read_corpus
from fewclip.pretrain.evaluate import _encode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="tiny-emoji-rn")
    p.add_argument("--checkpoint", default="default", help="a .safetensors file or 'default'")
    p.add_argument("--task", default="emoji_openmoji_subcategory")
    p.add_argument("--data-root", default="data")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.data_root)
    task = json.loads((root / args.task / "task.json").read_text())
    test = json.loads((root / args.task / split_file(args.task)).read_text())["test"]
    image_root = root / task["image_dir"]
    backbone = load_backbone(args.arch, args.checkpoint, device="cpu")
    image = _encode(backbone, [image_root / path for path, _, _ in test])
    labels = torch.tensor([label for _, label, _ in test])
    names = task["classnames"]
    members = {n: [] for n in names}
    for e in read_corpus(image_root):
        members.get(group_name(e, "subcategory"), []).append(e.name)
    prompts = {
        "task prompts": [[t.format(n) for t in EMOJI_TEMPLATES] for n in names],
        "one template": [[f"a {n} emoji."] for n in names],
        "mean of names": [[f"an emoji of {m}." for m in members[n]] for n in names],
    }
    results = {}
    for how, per_class in prompts.items():  # CLIP's prompt ensemble, as zero-shot builds it
        classifier = prompt_classifier(backbone, per_class, FeatureCache(None))  # (d, C)
        correct = (image @ classifier).argmax(-1) == labels
        results[how] = round(correct.float().mean().item() * 100, 1)
    print(json.dumps({"task": args.task, "checkpoint": backbone.weights_file, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
