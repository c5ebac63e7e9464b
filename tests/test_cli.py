"""The command line: listing, comparing (never merging configurations), clear errors with
no traceback and a non-zero exit (``--debug`` shows it), run's help and echo, --version."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fewclip import __version__
from fewclip.cli import main
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs on two image folders: zero-shot, Tip-Adapter at two seeds, and Tip-Adapter with
    another option value (which must stay a separate row)."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    coloured_squares(data / "squares", num_classes=4, per_class=12, seed=0)
    coloured_squares(data / "squares_b", num_classes=3, per_class=12, seed=1, offset=4)
    path = root / "r.sqlite"
    common = ["--backbone", "fewclip-test-rn", "--pretrained", "none", "--data-root", str(data)]
    common += ["--cache-dir", str(root / "cache"), "--results", str(path), "--no-progress"]
    for ds in ("folder:squares", "folder:squares_b"):
        assert main(["run", "--method", "zero_shot", "--shots", "0", "--dataset", ds, *common]) == 0
        for seed in ("1", "2"):
            args = ["run", "--method", "tip_adapter", "--shots", "2", "--seed", seed]
            assert main([*args, "--dataset", ds, *common]) == 0
            other = [*args, "--dataset", ds, "--option", "alpha_range=[1,1,1]", *common]
            assert main(other) == 0
    return {"path": path, "data": data, "common": common}


def test_run_echoes_method_variant_and_options(store, tmp_path, capsys):
    args = ["run", "--method", "tip_adapter", "--shots", "2", "--variant", "my ablation"]
    args += ["--dataset", "folder:squares", "--option", "beta_range=[1,1,1]", *store["common"]]
    assert main([*args, "--results", str(tmp_path / "echo.sqlite")]) == 0  # own store
    out = capsys.readouterr().out
    assert "running tip_adapter (variant 'my ablation') on folder:squares" in out
    assert '"beta_range": [1.0, 1.0, 1]' in out  # as the method resolved it
    assert '"alpha_range"' in out  # every option is echoed, the defaults included


def test_compare_never_merges_different_options(store, tmp_path, capsys):
    out = tmp_path / "c.csv"
    assert (
        main(
            [
                "compare",
                "--results",
                str(store["path"]),
                "--method",
                "tip_adapter",
                "--format",
                "csv",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    per_dataset = table[~table["dataset"].str.startswith("average")]
    # per dataset: the default options and alpha_range=[1,1,1] are two rows, two seeds each
    assert len(per_dataset) == 4 and (per_dataset["n_seeds"] == 2).all()
    assert "options.alpha_range" in table.columns
    assert per_dataset.groupby("dataset").size().tolist() == [2, 2]
    frame = ResultStore(store["path"]).to_frame()
    one = frame[(frame["method"] == "tip_adapter") & (frame["dataset"] == "folder:squares")]
    default = one[one["options.alpha_range"].map(lambda r: r is None)]
    squares = per_dataset[per_dataset["dataset"] == "folder:squares"]
    row = squares[squares["options.alpha_range"].isna()]  # the default (None)
    assert row["mean"].iloc[0] == pytest.approx(default["accuracy"].mean())
    assert row["std"].iloc[0] == pytest.approx(default["accuracy"].std(ddof=1))
    # the average over the two datasets, per configuration
    averages = table[table["dataset"].str.startswith("average")]
    assert len(averages) == 2 and (averages["n_datasets"] == 2).all()
    means = per_dataset.groupby(per_dataset["options.alpha_range"].fillna("default"))["mean"].mean()
    assert sorted(averages["mean"]) == pytest.approx(sorted(means))


def test_compare_formats_and_paper_columns(store, capsys):
    for fmt, marker in (("markdown", "|---|"), ("latex", "\\begin{tabular}"), ("table", "+-")):
        assert main(["compare", "--results", str(store["path"]), "--format", fmt]) == 0
        text = capsys.readouterr().out
        assert marker in text and "paper" in text and "delta" in text
    assert main(["compare", "--results", str(store["path"]), "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert {"paper", "paper_source", "delta", "mean", "std", "n_seeds"} <= set(table.columns)
    assert table["delta"].isna().all()  # a random test model is never compared to a paper


def test_results_show_the_given_options_and_rounded_numbers(store, capsys):
    assert main(["results", "--results", str(store["path"])]) == 0
    out = capsys.readouterr().out
    header, *rows = out.strip().splitlines()
    assert "options" in header.split() and len(rows) == 10
    assert sum("alpha_range=[1, 1, 1]" in r for r in rows) == 4  # never shown as a default
    assert sum(" default " in r for r in rows) == 6
    assert "None" not in out and "nan" not in out.lower()
    for number in re.findall(r"\d+\.\d+", out):
        assert len(number.split(".")[1]) == 2, number  # no 43.900001


def test_compare_is_sorted_narrow_and_merges_the_same_run(store, tmp_path, capsys):
    """Runs differing only in allow_fewer (on a full sample) and in an explicit default are
    one configuration; the table is sorted and narrow, --wide has every column."""
    path = str(tmp_path / "same.sqlite")
    base = ["run", "--method", "tip_adapter", "--shots", "2", "--dataset", "folder:squares"]
    common = [*store["common"], "--results", path]
    assert main([*base, "--seed", "1", *common]) == 0
    assert main([*base, "--seed", "2", "--allow-fewer", *common]) == 0
    assert main([*base, "--seed", "3", "--option", "alpha_scale=1.0", *common]) == 0
    capsys.readouterr()
    assert main(["compare", "--results", path, "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == 1 and table["n_seeds"].tolist() == [3]

    assert main(["compare", "--results", str(store["path"])]) == 0
    narrow = capsys.readouterr().out.rstrip("\n").splitlines()
    assert max(map(len, narrow)) <= 120, max(map(len, narrow))
    assert "setting" in narrow[0] and "weights" not in narrow[0]
    labels = [line.split()[0] for line in narrow[1:] if "average" not in line]
    assert labels == sorted(labels)  # tip_adapter rows, then zero_shot
    assert main(["compare", "--results", str(store["path"]), "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert "pretrained" in wide[0] and len(wide) == len(narrow)


def test_paper_delta_only_for_the_papers_model():
    from fewclip.compare import _is_papers_model, _paper_number

    row = {
        "method": "tip_adapter",
        "protocol": "few_shot",
        "dataset": "imagenet",
        "shots": 16,
        "backbone": "RN50",
        "pretrained": "openai",
    }
    value, backbone, source = _paper_number(row, "accuracy")
    assert value == 62.01 and backbone == "RN50" and "Tip-Adapter exp.log" in source
    assert _is_papers_model(row, backbone)
    assert not _is_papers_model({**row, "backbone": "tiny-emoji-rn"}, backbone)
    assert not _is_papers_model({**row, "pretrained": "/my/finetuned.pt"}, backbone)


def test_list_methods_datasets_backbones(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "clip_adapter (feature-level" in out and "    alpha = " in out
    assert "tip_adapter (feature-level; protocols: few_shot, domain_generalisation" in out
    assert "coop (encoder-level; protocols: few_shot, base_to_new" in out
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "eurosat" in out and "folder:<path>" in out and "<data root>/dtd" in out
    assert main(["list", "backbones"]) == 0
    out = capsys.readouterr().out
    assert "tiny-emoji-rn" in out and "fewclip-test-vit" in out
    assert any(line.startswith("RN50 ") and "openai" in line for line in out.splitlines())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fewclip", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--dataset", "no_such_dataset"], "unknown dataset"),
        (["run", "--dataset", "eurosatt"], "unknown dataset 'eurosatt'; did you mean 'eurosat'?"),
        (["run", "--method", "no_such_method"], "unknown method"),
        (["run", "--method", "clip_adaptor"], "did you mean 'clip_adapter'?"),
        (["run", "--method", "clip_adapter", "--option", "alfa=1"], "did you mean 'alpha'?"),
        (["run", "--method", "clip_adapter", "--option", "alpha=1.5"], "must be in [0, 1]"),
        (
            ["run", "--dataset", "tuxpaint_photos", "--data-root", "/nowhere"],
            "run `fewclip prepare --data-root /nowhere --only tuxpaint`",
        ),
        (["run", "--dataset", "eurosat", "--data-root", "/nowhere"], "fewclip prepare --data-root"),
        (["run", "--method", "clip_adapter", "--option", "alpha=abc"], "option alpha"),
        (["run", "--option", "noequals"], "--option expects key=value"),
        (["run", "--dataset", "folder:missing", "--data-root", "/nowhere"], "/nowhere"),
        (["results", "--results", "/nowhere/r.sqlite"], "no results store at /nowhere"),
        (["compare", "--results", "/nowhere/r.sqlite"], "no results store at /nowhere"),
    ],
)
def test_user_mistakes_give_one_line_and_a_nonzero_exit(args, message, tmp_path, capsys):
    if args[0] == "run":
        args = [*args, "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "running" not in out  # refused before the run banner
    first = err.strip().splitlines()[0]
    assert first.startswith("fewclip: error: ") and message in first, err
    assert not (tmp_path / "r.sqlite").exists()  # nothing written
    assert not Path("/nowhere").exists()  # results on a missing path creates nothing


def test_allow_fewer_on_the_command_line(store, tmp_path, capsys):
    """folder:squares has fewer than 20 training images per class: refused, naming the flag;
    --allow-fewer runs it, and the record says so."""
    args = ["run", "--method", "tip_adapter", "--shots", "20", "--dataset", "folder:squares"]
    args += [*store["common"], "--results", str(tmp_path / "few.sqlite")]
    assert main(args) == 1
    assert "--allow-fewer" in capsys.readouterr().err
    assert main([*args, "--allow-fewer"]) == 0
    assert "allow_fewer" in capsys.readouterr().out
    (config,) = ResultStore(tmp_path / "few.sqlite").to_frame(expand=False)["config"]
    assert config["allow_fewer"] is True


def test_in_a_real_process_the_exit_code_is_nonzero_and_there_is_no_traceback():
    done = cli("run", "--dataset", "no_such_dataset", "--results", "")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("fewclip: error: unknown dataset")


def test_debug_shows_the_traceback():
    done = cli("--debug", "results", "--results", "/nowhere/r.sqlite")
    assert (
        done.returncode != 0 and "Traceback" in done.stderr and "FileNotFoundError" in done.stderr
    )


def test_version_and_run_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fewclip {__version__}"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "methods: ape, ape_t, apex, clap, clip_adapter" in text and "datasets: " in text
    assert "eurosat" in text
    assert "(default: tiny-emoji-rn)" in text and "(default: 16)" in text
    assert "--no-progress" in text
