"""Inputs that used to give silently wrong results or cryptic late errors: each is refused
before any work, with one sentence naming the field or option and the expected type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fewclip.cli import _parse_options
from fewclip.config import RunConfig
from fewclip.methods import get_method
from fewclip.runner import run
from fewclip.sweep import grid


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("shots", "4", "shots must be an integer, got '4'"),
        ("shots", 1.5, "shots must be an integer, got 1.5"),
        ("shots", True, "shots must be an integer, got True"),
        ("seed", "abc", "seed must be an integer, got 'abc'"),
        ("seed", 1.0, "seed must be an integer, got 1.0"),  # not silently seed 1 under a new key
        ("augment_views", None, "augment_views must be an integer"),
        ("eval_datasets", "dtd", "eval_datasets must be a list of strings"),
        ("options", [("alpha", 1)], "options must be a dict"),
        ("allow_fewer", "yes", "allow_fewer must be true or false"),
    ],
)
def test_run_config_field_types_are_checked_on_construction(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        RunConfig(**{field: value})
    with pytest.raises(ValueError, match=expected):
        RunConfig().replace(**{field: value})
    with pytest.raises(ValueError, match=expected):
        grid(RunConfig(), **{field: [value]})


def test_run_config_accepts_equivalent_values():
    cfg = RunConfig(shots=np.int64(4), seed=np.int32(2), data_root=Path("/d"), templates="single")
    assert (cfg.shots, cfg.seed, cfg.data_root) == (4, 2, "/d")
    assert type(cfg.shots) is int and type(cfg.seed) is int
    same = cfg.replace(seed=1, data_root="x", templates=None)
    assert RunConfig(shots=4).run_key("b", "d") == same.run_key("b", "d")


@pytest.mark.parametrize(
    "method, pairs, expected",
    [
        ("clip_adapter", ["alpha=true"], "clip_adapter: option alpha must be a number, got True"),
        ("clip_adapter", ["alpha=abc"], "clip_adapter: option alpha must be a number, got 'abc'"),
        ("tip_adapter_f", ["epochs=2.5"], "option epochs must be an integer or None, got 2.5"),
        ("tip_adapter_f", ["epochs=-1"], "option epochs must be >= 0, got -1"),
        ("coop", ["lr=0"], "coop: option lr must be > 0"),
        ("dual_adapter", ["beta_range=[1,7]"], "option beta_range must be a list of 3"),
        ("dual_adapter", ["beta_range=[7,1,10]"], "low <= high"),
        ("tomm", ["ctp=1"], "option ctp must be true or false"),
        # documented intervals: CLIP-Adapter's residual ratios, a dropout, a momentum
        ("clip_adapter", ["alpha=1.5"], r"clip_adapter: option alpha must be in \[0, 1\], got 1.5"),
        ("clip_adapter", ["beta=-0.1"], r"option beta must be in \[0, 1\], got -0.1"),
        ("clip_lora", ["dropout=1.2"], r"option dropout must be in \[0, 1\]"),
        ("coop", ["momentum=2"], r"option momentum must be in \[0, 1\]"),
        ("clip_adapter", ["alfa=0.3"], "unknown option.*did you mean 'alpha'"),
    ],
)
def test_options_are_checked_against_the_methods_types_and_ranges(method, pairs, expected):
    with pytest.raises(ValueError, match=expected):
        get_method(method, **_parse_options(pairs))


def test_valid_options_are_converted():
    assert get_method("clip_adapter", alpha=1).options.alpha == 1.0
    assert get_method("clip_adapter", alpha=0, beta=1.0).options.beta == 1.0  # ends included
    assert get_method("dual_adapter", beta_range=[1, 7, 10]).options.beta_range == (1.0, 7.0, 10)


def _nothing_written(tmp_path) -> bool:
    return not (tmp_path / "cache").exists() and not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"method": "tip_adapter_f", "options": {"epochs": 2.5}}, "option epochs"),
        ({"method": "clip_adapter", "options": {"alpha": True}}, "option alpha"),
        ({"method": "tip_adapter", "shots": 0}, "shots=0 gives it none.*method='zero_shot'"),
        ({"method": "linear_probe", "shots": 0}, "shots=0 gives it none"),
        ({"method": "coop", "shots": 0}, "shots=0 gives it none"),
    ],
)
def test_bad_runs_are_refused_before_any_work(tmp_path, kw, expected):
    from fewclip.results import ResultStore

    cfg = RunConfig(
        dataset="folder:squares",  # does not exist: validation must come first
        data_root=str(tmp_path / "data"),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )
    with pytest.raises(ValueError, match=expected):
        run(cfg, store=ResultStore(None))
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_a_checkpoint_of_random_bytes_is_named_and_never_loaded_unsafely(tmp_path, suffix):
    from fewclip.backbones import InvalidCheckpointError, load_backbone

    junk = tmp_path / f"weights{suffix}"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidCheckpointError, match="is not a checkpoint") as info:
        load_backbone("fewclip-test-rn", str(junk), device="cpu")
    assert str(junk) in str(info.value) and "weights_only" not in str(info.value)


def test_an_empty_sweep_is_refused_by_the_notebook_helper_and_framed_by_the_api():
    from fewclip import notebook as nb
    from fewclip.sweep import run_sweep

    with pytest.raises(ValueError, match="lam sweep: no configurations to run"):
        nb.run_grid([], None, title="lam sweep")
    frame = run_sweep([], None, progress=False)
    assert len(frame) == 0 and {"method", "variant", "status", "skipped"} <= set(frame)


def test_the_cli_names_a_bad_option_in_one_line_before_any_work(tmp_path, capsys):
    from fewclip.cli import main

    status = main(
        ["run", "--method", "tip_adapter_f", "--option", "epochs=2.5", "--results", ""]
        + ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    )
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.startswith("fewclip: error: tip_adapter_f: option epochs must be")
    assert _nothing_written(tmp_path)
    # fewclip sweep: a bad sweep file is exit status 2
    assert main(["sweep", str(tmp_path / "missing.json"), "--results", ""]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err


def test_an_options_class_may_declare_its_own_ranges():
    from dataclasses import dataclass

    from fewclip.validation import check_options, did_you_mean, option_ranges

    @dataclass
    class Options:
        ratio: float = 0.5

    Options.ranges = {"ratio": (0.0, 0.9)}  # a class attribute, not a field

    assert option_ranges("mine", Options) == {"ratio": (0.0, 0.9)}
    assert check_options("mine", Options, {"ratio": 0.9}) == {"ratio": 0.9}
    with pytest.raises(ValueError, match=r"mine: option ratio must be in \[0, 0.9\], got 0.95"):
        check_options("mine", Options, {"ratio": 0.95})
    assert did_you_mean("eurosatt", ["dtd", "eurosat"]) == "; did you mean 'eurosat'?"
    assert did_you_mean("zzz", ["dtd", "eurosat"]) == ""


def test_a_notebook_outside_a_checkout_says_to_set_data_root(tmp_path, monkeypatch):
    from fewclip import notebook as nb

    monkeypatch.chdir(tmp_path)  # no pyproject.toml and data/ at or above it
    monkeypatch.delenv("FEWCLIP_DATA", raising=False)
    with pytest.raises(nb.DataRootError, match="set `data_root` in the parameters cell") as e:
        nb.base_config(data_root="data")
    assert "FEWCLIP_DATA" in str(e.value) and "fewclip prepare --data-root" in str(e.value)
    assert e.value._render_traceback_() == [f"DataRootError: {e.value}"]  # one line in Jupyter
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    monkeypatch.setenv("FEWCLIP_DATA", str(prepared))
    assert nb.base_config(data_root="data").data_root == str(prepared)
    # an explicit absolute root is the user's: used as given (runs name what is missing)
    assert nb.base_config(data_root=str(tmp_path / "x")).data_root == str(tmp_path / "x")
