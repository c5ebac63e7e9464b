"""Command line: ``fewclip <verb>`` (or ``python -m fewclip <verb>``).

fewclip run --method tip_adapter_f --dataset emoji_openmoji_subcategory --shots 16
fewclip results                        # the results table
fewclip sweep sweep.json --workers 2   # many runs (same as python -m fewclip.sweep)
fewclip demo                           # a quick offline end-to-end check
fewclip reports                        # build every report (reports/index.html)
fewclip prepare --data-root data       # fetch the offline corpus and tasks
fewclip pretrain --arch tiny-emoji-rn  # retrain a tiny CLIP
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import RunConfig


def _parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON where possible (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--method", default=d.method)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--pretrained", default=d.pretrained, help="tag, checkpoint file, or 'none'")
    p.add_argument("--shots", type=int, default=d.shots)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--protocol", default=d.protocol)
    p.add_argument("--selection", default=d.selection, choices=["val", "test"])
    p.add_argument("--val", default=d.val, choices=["few_shot", "full"], help="val split")
    p.add_argument(
        "--label-noise", type=float, default=d.label_noise, help="label flip probability"
    )
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--cache-dir", default=d.cache_dir)
    p.add_argument("--device", default=d.device)
    p.add_argument("--results", default="runs/results.sqlite", help="results store ('' for none)")
    p.add_argument("--force", action="store_true", help="rerun even if the store has this run")


def _run_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        method=args.method,
        dataset=args.dataset,
        backbone=args.backbone,
        pretrained=args.pretrained,
        shots=args.shots,
        seed=args.seed,
        protocol=args.protocol,
        selection=args.selection,
        val=args.val,
        label_noise=args.label_noise,
        options=_parse_options(args.option),
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        device=args.device,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .results import ResultStore
    from .runner import check_config, run

    try:
        config = _run_config(args)
        check_config(config)  # method, shots, options: before any work
    except ValueError as e:  # a bad field value: one sentence, no traceback
        raise SystemExit(f"fewclip run: {e}") from None
    store = ResultStore(args.results) if args.results else None
    record = run(config, store=store, force=args.force)
    state = "(from the results store)" if record.get("skipped") else ""
    print(
        f"{record['method']} on {record['dataset']}, {record['shots']} shots, "
        f"seed {record['seed']}: {record['accuracy']:.2f}% top-1 {state}\n"
        f"model: {record['model_label']}"
    )
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .results import ResultStore

    frame = ResultStore(args.results).to_frame(expand=False)
    if frame.empty:
        print(f"no results in {args.results}")
        return 0
    cols = [
        "method",
        "variant",
        "dataset",
        "protocol",
        "backbone",
        "shots",
        "seed",
        "accuracy",
        "hm",
    ]
    print(frame[cols].to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fewclip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("run", help="run one configuration")
    _add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="print the results table")
    p.add_argument("--results", default="runs/results.sqlite")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("demo", help="quick offline end-to-end check on the tiny pretrained model")
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--dataset", default=RunConfig().dataset)
    p.add_argument("--backbone", default=RunConfig().backbone)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--results", default="runs/results.sqlite", help="results store ('' for none)")
    p.set_defaults(func=lambda a: __import__("fewclip.demo", fromlist=["main"]).main(a))

    for verb, module in (
        ("prepare", "fewclip.offline"),
        ("pretrain", "fewclip.pretrain"),
        ("reports", "fewclip.reports"),
        ("sweep", "fewclip.sweep"),
    ):
        p = sub.add_parser(verb, help=f"same as python -m {module}", add_help=False)
        p.set_defaults(module=module)

    args, rest = parser.parse_known_args(argv)
    if args.verb == "reports":
        from .reports import main as reports_main

        return reports_main(rest)
    if args.verb == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(rest)
    if args.verb in ("prepare", "pretrain"):
        import runpy

        sys.argv = [args.module] + ([args.verb] if args.verb == "prepare" else []) + rest
        runpy.run_module(args.module, run_name="__main__")
        return 0
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
