"""Check that a restructuring changed no number: run a fixed set of configurations through
the run API and compare each record's fingerprint with the committed baseline.

    PYTHONPATH=lib FEWCLIP_DATA=data python benchmarks/check_records.py           # compare
    PYTHONPATH=lib FEWCLIP_DATA=data python benchmarks/check_records.py --update  # rewrite

The configurations: every method of the baseline, seeds 1 and 2, on two small offline
tasks (``emoji_noto_subcategory``; ``tuxpaint_photos`` with ``allow_fewer``; 4 shots, 2
augmented views),
with the fastest options that still run each method's code paths (few epochs, small
batches), plus DualAdapter under label noise. A fingerprint is the accuracy, the chosen
hyper-parameters, the best val accuracy, the trainable parameter count, a hash of each
test image's correctness and the training history (val accuracy per epoch; loss and
learning rate to six digits). Floats are compared exactly (by ``repr``) unless said.

Every option whose default may change on purpose (the prompt methods' init phrases,
APEX's epsilon and beta, TOMM's gate, the templates) is pinned to its value when the
baseline was written: the templates are stored resolved in the baseline and reused, so the
check measures a restructuring, not a chosen change of behaviour.

The default mode exits non-zero with one line per changed record. A method registered now
but absent from the baseline is listed and not checked (``--add`` adds it, leaving the
other records as they are); a method in
the baseline that is no longer registered fails the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fewclip.config import RunConfig
from fewclip.data import load_dataset
from fewclip.methods import FEATURE_METHODS, METHODS
from fewclip.runner import resolve_templates, run

BASELINE = Path(__file__).with_name("check_records.json")
#: Tasks and their RunConfig changes (Tux Paint's smallest classes have fewer than 4 val
#: images: an unbalanced sample, as the cache methods' blocked layouts must handle).
TASKS = {"emoji_noto_subcategory": {}, "tuxpaint_photos": {"allow_fewer": True}}
SEEDS = (1, 2)
SHOTS = 4
VIEWS = 2
ENCODER_BACKBONE = "tiny-emoji-vit"
FEATURE_BACKBONE = "tiny-emoji-rn"

#: Fast options per method, with every default that may change on purpose pinned.
OPTIONS: dict[str, dict[str, Any]] = {
    "zero_shot": {},
    "linear_probe": {"refine_steps": 0},
    "clip_adapter": {"epochs": 4},
    "tip_adapter": {},
    "tip_adapter_f": {"epochs": 4},
    "dual_adapter": {"epochs": 4},
    "coop": {"epochs": 2, "n_ctx": 2, "init": None},
    "cocoop": {"epochs": 1, "batch_size": 8, "init": "a photo of a"},
    "apex": {"epochs": 1, "text_init": "a photo of a", "epsilon": 0.05, "beta": 4.0},
    "tomm": {
        "epochs": 1,
        "batch_size": 8,
        "init": "a photo of a",
        "tft_gate_init": 0.0,
        "tft_lr_factor": 10.0,
    },
    "kgcoop": {"epochs": 2, "batch_size": 16, "init": "an emoji of", "template": "an emoji of {}."},
    "prograd": {"epochs": 2, "n_ctx": 8, "template": "an emoji of {}."},
    "proda": {"epochs": 2, "n_prompts": 4, "n_ctx": 4, "init": None},
    "maple": {"epochs": 1, "batch_size": 4, "init": "backbone"},
    "promptsrc": {"epochs": 1, "batch_size": 4, "init": "backbone"},
    "clip_lora": {"iterations": 2, "batch_size": 8},
}
#: Defaults changed on purpose after the baseline was written, pinned to the value the
#: baseline ran with for every method that has the option (the encoder-level methods'
#: training crop: Dassl's on every backbone, see docs/constants.md).
PINNED_SINCE: dict[str, Any] = {"crop_scale_min": "official"}


def pinned(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with :data:`PINNED_SINCE` added where ``method`` has the option."""
    fields = {f.name for f in dataclasses.fields(METHODS[method].Options)}
    return {**{k: v for k, v in PINNED_SINCE.items() if k in fields}, **options}


#: Extra configurations: (name suffix, method, RunConfig changes).
EXTRA = (("noisy", "dual_adapter", {"label_noise": 0.25}),)


def configurations(data_root: str, cache_dir: str) -> dict[str, RunConfig]:
    """Every configuration of the check, by a stable name."""
    out: dict[str, RunConfig] = {}
    runs = [(m, m, {}) for m in sorted(METHODS)] + [(f"{m}:{s}", m, kw) for s, m, kw in EXTRA]
    for task, task_changes in TASKS.items():
        dataset = load_dataset(task, data_root)
        for name, method, changes in runs:
            for seed in SEEDS:
                backbone = FEATURE_BACKBONE if method in FEATURE_METHODS else ENCODER_BACKBONE
                cfg = RunConfig(
                    method=method,
                    dataset=task,
                    backbone=backbone,
                    shots=SHOTS,
                    seed=seed,
                    augment_views=VIEWS,
                    options=pinned(method, dict(OPTIONS.get(method, {}))),
                    data_root=data_root,
                    cache_dir=cache_dir,
                    progress=False,
                    **task_changes,
                    **changes,
                )
                cfg = cfg.replace(templates=resolve_templates(cfg, dataset))
                out[f"{task}/{name}/seed{seed}"] = cfg
    return out


def fingerprint(record: dict[str, Any]) -> dict[str, str]:
    """The numbers a restructuring must not change, as exact strings."""
    metrics = record["metrics"]
    correct = json.dumps(metrics["correct"], sort_keys=True)
    return {
        "accuracy": repr(record["accuracy"]),
        "chosen": json.dumps(record["chosen"], sort_keys=True, default=repr),
        "best_val_accuracy": repr(metrics.get("best_val_accuracy")),
        "trainable_params": repr(record["trainable_params"]),
        "correct": hashlib.sha256(correct.encode()).hexdigest()[:16],
        "history": json.dumps([_epoch(e) for e in record.get("history") or []]),
    }


def _epoch(entry: dict[str, Any]) -> dict[str, Any]:
    """An epoch of the training history: val accuracy exactly, loss and learning rate to
    six significant digits (a summation order may move their last bits)."""
    out = {k: entry[k] for k in ("epoch", "val_acc") if k in entry}
    for k in ("loss", "lr"):
        if isinstance(entry.get(k), float):
            out[k] = f"{entry[k]:.6g}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline")
    parser.add_argument(
        "--add", action="store_true", help="add the configurations missing from the baseline"
    )
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--data-root", default=os.environ.get("FEWCLIP_DATA", "data"))
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: temporary)")
    parser.add_argument("--note", default="", help="where the baseline came from")
    parser.add_argument("--only", default="", help="check only names containing this")
    args = parser.parse_args(argv)

    baseline: dict[str, Any] = {}
    if args.baseline.exists():
        baseline = json.loads(args.baseline.read_text())
    elif not args.update:
        print(f"no baseline at {args.baseline}; write one with --update", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or tmp
        configs = configurations(args.data_root, cache_dir)
        stored = baseline.get("records", {})
        new = sorted({c.method for n, c in configs.items() if n not in stored})
        if args.add:
            configs = {n: c for n, c in configs.items() if n not in stored}
        elif not args.update:
            # rerun exactly the baseline's configurations (templates and options pinned)
            configs = {
                name: RunConfig.from_dict(
                    {
                        **entry["config"],
                        "options": pinned(
                            entry["config"]["method"], entry["config"].get("options") or {}
                        ),
                        "data_root": args.data_root,
                        "cache_dir": cache_dir,
                    }
                )
                for name, entry in stored.items()
                if entry["config"]["method"] in METHODS
            }
        names = [n for n in configs if args.only in n]
        results: dict[str, Any] = {}
        start = time.perf_counter()
        for name in names:
            cfg = configs[name]
            record = run(cfg)
            config = cfg.to_dict()
            for k in ("data_root", "cache_dir"):
                config.pop(k)
            results[name] = {"config": config, "fingerprint": fingerprint(record)}
        seconds = time.perf_counter() - start

    if args.update or args.add:
        records = {**stored, **results} if (args.only or args.add) else results
        note = baseline.get("note", "") or args.note
        payload = {"note": note, "records": dict(sorted(records.items()))}
        args.baseline.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(results)} records to {args.baseline} ({seconds:.0f} s)")
        return 0

    failures = []
    for name, entry in sorted(stored.items()):
        if args.only not in name:
            continue
        if name not in results:
            failures.append(f"{name}: method {entry['config']['method']!r} no longer registered")
            continue
        want, got = entry["fingerprint"], results[name]["fingerprint"]
        changed = [f"{k} {want[k]} -> {got.get(k)}" for k in want if want[k] != got.get(k)]
        if changed:
            failures.append(f"{name}: " + "; ".join(changed))
    if new:
        print(f"not in the baseline (not checked; --add adds them): {', '.join(new)}")
    for line in failures:
        print(line)
    checked = sum(1 for n in stored if args.only in n)
    print(f"{checked - len(failures)} of {checked} records identical ({seconds:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
