"""Command line: ``fewclip <verb>`` (or ``python -m fewclip <verb>``).

fewclip run --method tip_adapter_f --dataset emoji_openmoji_subcategory --shots 16
fewclip list methods                   # methods with their options and defaults
fewclip list datasets | backbones      # the names fewclip knows
fewclip results                        # the results table
fewclip sweep sweep.json --workers 2   # many runs (same as python -m fewclip.sweep)
fewclip sweep sweep.json --slurm        # ... on a Slurm cluster (docs/cluster.md)
fewclip compare --format markdown      # mean +- std over seeds, paper numbers beside
fewclip demo                           # a quick offline end-to-end check
fewclip reports                        # build every report (reports/index.html)
fewclip prepare --data-root data       # fetch the offline corpus and tasks
fewclip pretrain --arch tiny-emoji-rn  # retrain a tiny CLIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

from . import __version__
from .config import SELECTIONS, VAL_SPLITS, RunConfig, default_data_root

#: Exit code of a user mistake (bad name, missing file, bad option); argparse uses 2.
USER_ERROR = 1


def _parse_value(text: str):
    """A value given on the command line: JSON where it parses (numbers, booleans, lists),
    else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON where possible (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = _parse_value(value)
    return out


def _method_lines() -> list[str]:
    """One line per method: its kind, protocols and options with their defaults."""
    from .methods import FEATURE_METHODS, METHODS
    from .runner import transfers_to_new_classes

    lines = []
    for name in sorted(METHODS):
        cls = METHODS[name]
        kind = "feature-level" if name in FEATURE_METHODS else "encoder-level"
        protocols = "few_shot, domain_generalisation (same classes)"
        if transfers_to_new_classes(cls):
            protocols = "few_shot, base_to_new, cross_dataset, domain_generalisation"
        lines.append(f"{name} ({kind}; protocols: {protocols})")
        for f in dataclasses.fields(cls.Options):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            lines.append(f"    {f.name} = {default!r}")
    return lines


def _dataset_names() -> list[str]:
    from . import runner  # noqa: F401  (registers the offline task readers)
    from .data.base import _PREFIXES, list_datasets

    return list_datasets() + [f"{prefix}:<path>" for prefix in sorted(_PREFIXES)]


def _run_epilog() -> str:
    from .methods import METHODS

    return (
        "methods: "
        + ", ".join(sorted(METHODS))
        + "\n(options and defaults: fewclip list methods)\n\ndatasets: "
        + ", ".join(_dataset_names())
        + "\n\nexample: fewclip run --method clip_adapter --option alpha=0.6 --shots 4"
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--method", default=d.method, help="a method (fewclip list methods)")
    p.add_argument("--dataset", default=d.dataset, help="a dataset (fewclip list datasets)")
    p.add_argument("--backbone", default=d.backbone, help="fewclip list backbones")
    p.add_argument("--pretrained", default=d.pretrained, help="tag, checkpoint file, or 'none'")
    p.add_argument("--shots", type=int, default=d.shots, help="K shots per class")
    p.add_argument("--seed", type=int, default=d.seed, help="few-shot sample and init seed")
    p.add_argument("--protocol", default=d.protocol, help="few_shot, base_to_new, ...")
    p.add_argument(
        "--eval-dataset",
        action="append",
        default=[],
        metavar="DATASET",
        help="target dataset of cross_dataset / domain_generalisation (repeat)",
    )
    p.add_argument("--variant", default=d.variant, help="a free label for ablations")
    p.add_argument("--selection", default=d.selection, choices=list(SELECTIONS))
    p.add_argument("--val", default=d.val, choices=list(VAL_SPLITS), help="val split")
    p.add_argument(
        "--label-noise", type=float, default=d.label_noise, help="label flip probability"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option (repeat); values are JSON where they parse",
    )
    p.add_argument("--data-root", default=d.data_root, help="where the datasets are")
    p.add_argument("--cache-dir", default=d.cache_dir, help="feature cache folder")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--results", default="runs/results.sqlite", help="results store ('' for none)")
    p.add_argument("--force", action="store_true", help="rerun even if the store has this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--allow-fewer",
        action="store_true",
        help="classes with fewer than K training images give all they have (else refused)",
    )


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
        variant=args.variant,
        eval_datasets=list(args.eval_dataset),
        allow_fewer=args.allow_fewer,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        device=args.device,
        progress=not args.no_progress,
    )


def check_names(config: RunConfig) -> None:
    """The method, dataset (and evaluation datasets) and option names of a run checked
    against the known ones, with the closest name proposed ("did you mean")."""
    from .data.base import _PREFIXES, list_datasets
    from .methods import METHODS
    from .validation import did_you_mean

    if config.method not in METHODS:
        raise ValueError(
            f"unknown method {config.method!r}{did_you_mean(config.method, METHODS)} "
            "(fewclip list methods shows every method)"
        )
    known = list_datasets()
    for name in [config.dataset, *config.eval_datasets]:
        prefix, sep, _ = name.partition(":")
        if (sep and prefix in _PREFIXES) or name in known:
            continue
        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean(name, known)} "
            "(fewclip list datasets shows every dataset)"
        )
    fields = {f.name for f in dataclasses.fields(METHODS[config.method].Options)}
    for key in config.options:
        if key not in fields:
            raise ValueError(
                f"{config.method}: unknown option {key!r}{did_you_mean(key, fields)} "
                "(fewclip list methods shows each method's options)"
            )


def check_data_root(config: RunConfig) -> None:
    """Each named dataset of the run present under the data root, else one sentence
    saying how to prepare it (``fewclip prepare --data-root ...``) or where to point."""
    from .data.base import dataset_folder
    from .offline.tasks import TASKS, read_task_record

    root = Path(config.data_root).expanduser()
    for name in [config.dataset, *config.eval_datasets]:
        if ":" in name:
            continue  # a folder form: load_dataset names the missing folder
        if name in TASKS:
            if read_task_record(root, name) is None:
                raise FileNotFoundError(
                    f"offline task {name!r} is not prepared under the data root {root}: run "
                    f"`fewclip prepare --data-root {root} --only {TASKS[name].group}`, or give "
                    "--data-root (or set FEWCLIP_DATA) where it is prepared"
                )
        elif not (root / dataset_folder(name)).is_dir():
            raise FileNotFoundError(
                f"dataset {name!r} is not under the data root {root} (no "
                f"{root / dataset_folder(name)}): give --data-root (or set FEWCLIP_DATA) where "
                "it is, see data/README.md for how to get it, or run `fewclip prepare "
                f"--data-root {root}` for the offline tasks"
            )


def cmd_run(args: argparse.Namespace) -> int:
    from .results import ResultStore
    from .runner import check_config, run

    config = _run_config(args)
    # the user's mistakes (names, ranges, files) before the banner and before any work
    check_names(config)
    options = check_config(config).options_dict()  # method, shots, options: types and ranges
    from .backbones import resolve_weights
    from .data import load_dataset

    resolve_weights(config.backbone, config.pretrained)
    check_data_root(config)
    load_dataset(config.dataset, config.data_root, **config.reader_options)
    print(
        f"running {config.method}"
        + (f" (variant {config.variant!r})" if config.variant else "")
        + f" on {config.dataset}, {config.protocol}, {config.shots} shots, seed {config.seed}, "
        f"{config.backbone}/{config.pretrained}\noptions: {json.dumps(options, default=str)}"
        + (
            "\nallow_fewer: classes with fewer than K images give all they have"
            if config.allow_fewer
            else ""
        ),
        flush=True,
    )
    store = ResultStore(args.results) if args.results else None
    record = run(config, store=store, force=args.force)
    state = "(from the results store)" if record.get("skipped") else ""
    print(
        f"{record['method']} on {record['dataset']}, {record['shots']} shots, "
        f"seed {record['seed']}: {record['accuracy']:.2f}% top-1 {state}\n"
        f"model: {record['model_label']}"
    )
    return 0


def _existing_store(path: str):
    from .results import ResultStore

    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(
            f"no results store at {path}: give the file your runs wrote (--results PATH)"
        )
    return ResultStore(path)


#: The one symbol of a missing value in the CLI's tables.
MISSING = "-"


def _number(value, digits: int = 2) -> str:
    """A metric as shown: ``digits`` decimals, :data:`MISSING` for None or NaN."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return MISSING
    return MISSING if x != x else f"{x:.{digits}f}"


def _given_options(record: dict) -> str:
    """The options a run was given (``key=value``, sorted), with ``allow_fewer`` where set;
    ``default`` for none."""
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    given = dict(cfg.get("options") or {})
    if cfg.get("allow_fewer"):
        given["allow_fewer"] = True
    parts = [f"{k}={json.dumps(v, default=str)}" for k, v in sorted(given.items())]
    return " ".join(parts) or "default"


def results_table(frame):
    """The results store as ``fewclip results`` shows it: one row per run, the options it
    was given, accuracies to two decimals, :data:`MISSING` where a metric does not apply."""
    import pandas as pd

    records = frame.to_dict("records")
    columns = ["method", "variant", "dataset", "protocol", "backbone", "shots", "seed"]
    out = pd.DataFrame([{c: r.get(c) for c in columns} for r in records])
    out["variant"] = out["variant"].fillna("").replace("", MISSING)
    out["options"] = [_given_options(r) for r in records]
    out["accuracy"] = [_number(r.get("accuracy")) for r in records]
    out["hm"] = [_number(r.get("hm")) for r in records]
    return out.sort_values(["method", "dataset", "shots", "seed"], kind="stable")


def cmd_results(args: argparse.Namespace) -> int:
    frame = _existing_store(args.results).to_frame(expand=False)
    if frame.empty:
        print(f"no results in {args.results}")
        return 0
    print(results_table(frame).to_string(index=False))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        print("\n".join(_method_lines()))
    elif args.what == "datasets":
        from .data.base import dataset_folder

        for name in _dataset_names():
            folder = dataset_folder(name) if ":" not in name else name.split(":", 1)[1]
            print(f"{name:40s} <data root>/{folder}")
    else:
        import open_clip

        from .backbones import PROJECT_WEIGHTS, TEST_ARCHS

        for name, weights in PROJECT_WEIGHTS.items():
            print(f"{name:28s} pretrained: default ({weights.description})")
        for name in TEST_ARCHS:
            print(f"{name:28s} pretrained: none (random init, for tests)")
        tags: dict[str, list[str]] = {}
        for arch, tag in open_clip.list_pretrained():
            tags.setdefault(arch, []).append(tag)
        for arch in open_clip.list_models():
            if arch in PROJECT_WEIGHTS or arch in TEST_ARCHS:
                continue
            known = ", ".join(tags.get(arch, [])) or "none (a checkpoint file)"
            print(f"{arch:28s} pretrained: {known}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_table, export

    frame = _existing_store(args.results).to_frame(expand=False)
    filters = {
        "method": args.method,
        "dataset": args.dataset,
        "backbone": args.backbone,
        "protocol": args.protocol,
        "shots": args.shots,
    }
    for column, wanted in filters.items():
        if wanted:
            frame = frame[frame[column].isin(wanted)]
    if frame.empty:
        raise ValueError(f"no runs in {args.results} match {_given(filters)}")
    table = compare_table(frame, value=args.value, average=not args.no_average)
    text = export(table, args.format, wide=args.wide)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(table)} rows to {args.out}")
    else:
        print(text)
    return 0


def _given(filters: dict) -> str:
    given = {k: v for k, v in filters.items() if v}
    return ", ".join(f"{k} in {v}" for k, v in given.items()) or "(no filter)"


def reports_parser() -> argparse.ArgumentParser:
    """The arguments of ``fewclip reports`` (``python -m fewclip.reports``)."""
    from . import reports
    from .cluster import add_cluster_arguments

    parser = argparse.ArgumentParser(
        prog="fewclip reports",
        description=reports.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="*",
        help=f"reports to build, of {list(reports.NOTEBOOKS)} "
        f"(default: {' '.join(reports.PAPER_REPORTS)})",
    )
    parser.add_argument("--spec", help="JSON list of report specs, instead of names")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="quicker settings for every report (fewer seeds and tasks; make demo): "
        "fewclip.reports.QUICK, under the -p overrides",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a parameter for every report; VALUE is parsed as JSON where it can be",
    )
    parser.add_argument("--notebooks", default="notebooks", help="folder of the named notebooks")
    parser.add_argument("--out", default="reports", help="where reports and index go")
    parser.add_argument("--data-root", default=default_data_root(), help="$FEWCLIP_DATA or data")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--results", default="runs/results.sqlite", help="shared results store")
    parser.add_argument("--workers", type=int, default=1, help="notebooks at a time, locally")
    add_cluster_arguments(parser, "notebooks' runs")
    parser.add_argument("--force", action="store_true", help="execute even if up to date")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--timeout", type=float, help="seconds per cell (default: none)")
    parser.add_argument("--code", action="store_true", help="show the code cells in the HTML")
    parser.add_argument(
        "--no-code", action="store_true", help="hide the code cells (the default; kept for scripts)"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def cmd_reports(argv: list[str] | None = None) -> int:
    """``fewclip reports`` / ``python -m fewclip.reports``: build the reports and their
    index (:func:`fewclip.reports.build_reports`); returns 1 if a report failed."""
    from . import reports
    from .cluster import scheduler_address, scheduler_from_args

    parser = reports_parser()
    args = parser.parse_args(argv)
    if args.spec and args.names:
        parser.error("give report names or --spec, not both")
    try:
        specs = (
            reports.load_specs(args.spec)
            if args.spec
            else reports.default_specs(args.names or reports.PAPER_REPORTS, args.notebooks)
        )
    except (ValueError, OSError, TypeError, KeyError) as e:
        parser.error(str(e))
    if args.quick:
        specs = reports.quick_specs(specs)
    overrides = {k: _parse_value(v) for k, v in args.parameter}
    if (args.slurm or args.scheduler) and "scheduler" in overrides:
        parser.error("give --slurm / --scheduler or -p scheduler, not both")
    try:
        # the notebooks run here, their runs on the cluster: this process writes the store
        with scheduler_from_args(args) as scheduler:
            if scheduler is not None:
                overrides["scheduler"] = scheduler_address(scheduler)
            frame = reports.build_reports(
                specs,
                args.out,
                data_root=args.data_root,
                cache_dir=args.cache_dir,
                results=args.results,
                overrides=overrides,
                workers=args.workers,
                force=args.force,
                kernel=args.kernel,
                timeout=args.timeout,
                code=args.code and not args.no_code,
                progress=not args.no_progress,
            )
    except ValueError as e:
        parser.error(str(e))
    failed = frame[frame["status"] != "ok"]
    reused = int(frame["skipped"].sum())
    print(
        f"{len(frame)} reports: {len(frame) - len(failed)} ok ({reused} up to date), "
        f"{len(failed)} failed -> {Path(args.out) / reports.INDEX}"
    )
    for row in failed.itertuples():
        print(textwrap.indent(f"{row.name}: {row.error}", "  "), file=sys.stderr)
    return 1 if len(failed) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewclip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fewclip {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for bug reports)"
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    class Formatter(argparse.RawDescriptionHelpFormatter, defaults):
        pass

    p = sub.add_parser(
        "run", help="run one configuration", epilog=_run_epilog(), formatter_class=Formatter
    )
    _add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list methods (with options), datasets or backbones")
    p.add_argument("what", choices=["methods", "datasets", "backbones"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("results", help="print the results table")
    p.add_argument("--results", default="runs/results.sqlite")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "compare",
        help="mean +- std over seeds per configuration, averages and paper numbers",
        formatter_class=Formatter,
        description="One row per (method, options, weights, dataset, shots, ...), sorted: runs "
        "that differ in anything but the seed are never merged (the fields that differ are "
        "shown as one setting column; --wide shows every column); records that resolve to the "
        "same run are one row. "
        "Then the average over datasets of each configuration, and the published number of the "
        "method's paper with our delta (only where our model is the paper's).",
    )
    p.add_argument("--results", default="runs/results.sqlite")
    p.add_argument("--method", action="append", help="keep these methods (repeat)")
    p.add_argument("--dataset", action="append", help="keep these datasets (repeat)")
    p.add_argument("--backbone", action="append", help="keep these backbones (repeat)")
    p.add_argument("--protocol", action="append", help="keep these protocols (repeat)")
    p.add_argument("--shots", action="append", type=int, help="keep these shots (repeat)")
    p.add_argument("--value", default="accuracy", help="accuracy, base_accuracy, new_accuracy")
    p.add_argument("--no-average", action="store_true", help="no average over datasets")
    p.add_argument("--format", default="table", choices=["table", "csv", "markdown", "latex"])
    p.add_argument(
        "--wide", action="store_true", help="every key column (default: the ones that differ)"
    )
    p.add_argument("--out", help="write to this file instead of printing")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="quick offline end-to-end check on the tiny pretrained model")
    p.add_argument("--data-root", default=RunConfig().data_root)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a verb; a user mistake prints one line ``fewclip: error: ...`` and returns 1
    (``--debug`` raises it with its traceback instead)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return _dispatch(parser, args, rest)
    except KeyboardInterrupt:
        print("fewclip: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        kind = "" if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: "
        message = str(error).strip() or type(error).__name__
        print(f"fewclip: error: {kind}{message}", file=sys.stderr)
        print("(fewclip --debug ... shows the traceback)", file=sys.stderr)
        return USER_ERROR


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, rest: list[str]) -> int:
    if args.verb == "reports":
        return cmd_reports(rest)
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
