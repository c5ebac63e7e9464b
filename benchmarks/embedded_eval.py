"""Evaluate an embedded checkpoint on the emoji corpus and on every offline task.

    python benchmarks/embedded_eval.py --arch tiny-emoji-rn --checkpoint PATH \\
        --data-root data --out runs/eval/tiny-emoji-rn.tasks.json [--label v2]

Writes one JSON object:

- ``corpus``: zero-shot top-1/top-5 per style for three groups of names (``all_names``:
  every emoji the style draws, among all of them; ``seen_names``; ``heldout_names``), from
  :func:`fewclip.pretrain.evaluate.evaluate_backbone`;
- ``tasks``: per offline few-shot task, zero-shot and Tip-Adapter-F accuracy with K shots
  (16, or the most the task supports), seed 1, the run API's defaults (val selection);
  with ``--seeds 1,2,3`` also ``tip_adapter_f_seeds`` (one accuracy per seed, the first
  is ``tip_adapter_f``) and ``tip_adapter_f_mean`` (zero-shot does not depend on the seed);
- ``test_only``: zero-shot on the test-only tasks (names, ``emoji_dg_noto``);
- ``domain_generalisation``: Tip-Adapter-F and zero-shot trained on ``emoji_dg_twitter``,
  tested on the held-out styles of the DG family (``metrics["transfer"]``);
- ``base_to_new``: zero-shot base / new / harmonic mean on the base-to-new tasks.

The backbone is loaded from the given checkpoint file, so old and new checkpoints are
evaluated in the same way; ``--label`` names the checkpoint in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fewclip import RunConfig, run
from fewclip.backbones import file_digest, load_backbone
from fewclip.offline.tasks import read_task_record
from fewclip.pretrain.evaluate import evaluate_backbone

#: few-shot tasks (name -> shots); fashion/animal/tuxpaint included: adaptation must matter
FEW_SHOT = {
    "emoji_openmoji_category": 16,
    "emoji_noto_category": 16,
    "emoji_fluent_flat_category": 16,
    "emoji_fluent_mono_category": 16,
    "emoji_openmoji_subcategory": 16,
    "emoji_noto_subcategory": 16,
    "emoji_fluent_flat_subcategory": 16,
    "emoji_fluent_mono_subcategory": 16,
    "emoji_unseen_subcategory": 16,
    "emoji_subcategory_b2n": 16,
    "emoji_dg_twitter": 16,
    "emoji_dg_openmoji": 16,
    "emoji_dg_fluent_flat": 16,
    "emoji_dg_fluent_mono": 16,
    "emoji_unseen_name": 4,
    "emoji_name_b2n": 4,
    "fashion_mnist": 16,
    "animal_mnist": 16,
    "tuxpaint_photos": 4,
}
ALLOW_FEWER = ("emoji_unseen_name", "emoji_name_b2n", "tuxpaint_photos")
TEST_ONLY = (
    "emoji_openmoji_name",
    "emoji_noto_name",
    "emoji_fluent_flat_name",
    "emoji_fluent_mono_name",
    "emoji_dg_noto",
)
DG_SOURCE = "emoji_dg_twitter"
DG_TARGETS = ("emoji_dg_openmoji", "emoji_dg_fluent_flat", "emoji_dg_fluent_mono", "emoji_dg_noto")
B2N = ("emoji_subcategory_b2n", "emoji_name_b2n")


def _acc(record: dict) -> float:
    return round(float(record["accuracy"]), 2)


PARTS = ("corpus", "tasks", "test_only", "domain_generalisation", "base_to_new")


def evaluate(
    arch: str,
    checkpoint: str,
    data_root: str,
    cache: str,
    quick: bool,
    parts: tuple[str, ...] = PARTS,
    tasks: tuple[str, ...] = tuple(FEW_SHOT),
    out: dict | None = None,
    save=lambda out: None,
    seeds: tuple[int, ...] = (1,),
) -> dict:
    """The parts asked for, added to ``out``; ``save(out)`` is called after each result, so
    an interrupted evaluation keeps what it finished."""
    base = RunConfig(
        backbone=arch, pretrained=checkpoint, data_root=data_root, cache_dir=cache, progress=False
    )
    out = out if out is not None else {}
    out.update(arch=arch, checkpoint=Path(checkpoint).name)
    out["checkpoint_sha256"] = file_digest(checkpoint)
    t0 = time.time()
    if "corpus" in parts:
        out["corpus"] = evaluate_backbone(
            load_backbone(arch, checkpoint, device="cpu"), Path(data_root) / "emoji-corpus"
        )
        save(out)
        print(f"corpus done ({time.time() - t0:.0f} s)", file=sys.stderr)
    out.setdefault("tasks", {})
    for task, shots in FEW_SHOT.items():
        if "tasks" not in parts or task not in tasks:
            continue
        if read_task_record(data_root, task) is None:
            continue
        # the skin-tone name tasks have one val picture per class by design (and the smallest
        # Tux Paint classes 4 train pictures): take what there is
        cfg = base.replace(dataset=task, allow_fewer=task in ALLOW_FEWER)
        row = {"shots": shots, "zero_shot": _acc(run(cfg.replace(method="zero_shot", shots=0)))}
        if not quick:
            tip = cfg.replace(method="tip_adapter_f", shots=shots)
            accs = [_acc(run(tip.replace(seed=s))) for s in seeds]
            row["tip_adapter_f"] = accs[0]
            if len(seeds) > 1:
                row["tip_adapter_f_seeds"] = dict(zip(map(str, seeds), accs, strict=True))
                row["tip_adapter_f_mean"] = round(sum(accs) / len(accs), 2)
        out["tasks"][task] = row
        save(out)
        print(f"{task}: {row} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if "test_only" in parts:
        out["test_only"] = {
            t: _acc(run(base.replace(dataset=t, method="zero_shot", shots=0)))
            for t in TEST_ONLY
            if read_task_record(data_root, t) is not None
        }
        save(out)
    if "domain_generalisation" in parts:
        _domain_generalisation(base, out, quick)
        save(out)
    if "base_to_new" in parts:
        _base_to_new(base, out)
        save(out)
    out["seconds"] = round(out.get("seconds", 0) + time.time() - t0, 1)
    return out


def _domain_generalisation(base: RunConfig, out: dict, quick: bool) -> None:
    dg = base.replace(
        dataset=DG_SOURCE, protocol="domain_generalisation", eval_datasets=list(DG_TARGETS)
    )
    out["domain_generalisation"] = {"source": DG_SOURCE}
    for method, shots in (("zero_shot", 0), ("tip_adapter_f", 16)):
        if quick and method != "zero_shot":
            continue
        r = run(dg.replace(method=method, shots=shots))
        out["domain_generalisation"][method] = {
            "source": _acc(r),
            **{k: round(float(v), 2) for k, v in r["metrics"]["transfer"].items()},
        }


def _base_to_new(base: RunConfig, out: dict) -> None:
    out["base_to_new"] = {}
    for task in B2N:
        r = run(base.replace(dataset=task, protocol="base_to_new", method="zero_shot", shots=0))
        out["base_to_new"][task] = {
            "zero_shot": {
                "base": round(float(r["metrics"]["base"]["accuracy"]), 2),
                "new": round(float(r["metrics"]["new"]["accuracy"]), 2),
                "hm": _acc(r),
            }
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--label", default="")
    p.add_argument("--quick", action="store_true", help="zero-shot only")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    p.add_argument("--tasks", default=",".join(FEW_SHOT), help="few-shot tasks to run")
    p.add_argument("--out", required=True, help="JSON file (results are added to it)")
    p.add_argument(
        "--seeds", default="1", help="Tip-Adapter-F's seeds on the few-shot tasks, e.g. 1,2,3"
    )
    args = p.parse_args(argv)
    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x)
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    if not seeds:
        p.error("--seeds needs at least one seed")
    if not Path(args.checkpoint).is_file():
        p.error(f"no checkpoint at {args.checkpoint}")
    parts = tuple(x for x in args.parts.split(",") if x)
    if set(parts) - set(PARTS):
        p.error(f"unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out_path.read_text()) if out_path.is_file() else {}
    existing["label"] = args.label

    def save(result: dict) -> None:
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out_path)

    evaluate(
        args.arch,
        args.checkpoint,
        args.data_root,
        args.cache_dir,
        args.quick,
        parts,
        tuple(t for t in args.tasks.split(",") if t),
        existing,
        save,
        seeds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
