"""The default data root: ``$FEWCLIP_DATA`` when set, else ``data``; never part of a run key."""

from __future__ import annotations

from fewclip.cli import build_parser
from fewclip.config import RunConfig, default_data_root


def test_the_default_data_root_is_fewclip_data_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWCLIP_DATA", str(tmp_path))
    assert default_data_root() == str(tmp_path)
    assert RunConfig().data_root == str(tmp_path)
    assert RunConfig(data_root="elsewhere").data_root == "elsewhere"  # a given root wins


def test_without_fewclip_data_it_is_data(monkeypatch):
    monkeypatch.delenv("FEWCLIP_DATA", raising=False)
    assert RunConfig().data_root == "data"
    monkeypatch.setenv("FEWCLIP_DATA", "")  # empty counts as unset
    assert RunConfig().data_root == "data"


def test_the_cli_default_follows_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWCLIP_DATA", str(tmp_path))
    args = build_parser().parse_args(["run", "--method", "zero_shot"])
    assert args.data_root == str(tmp_path)
    monkeypatch.delenv("FEWCLIP_DATA")
    assert build_parser().parse_args(["run"]).data_root == "data"


def test_the_data_root_is_not_part_of_the_run_key(monkeypatch, tmp_path):
    monkeypatch.delenv("FEWCLIP_DATA", raising=False)
    here = RunConfig().run_key("weights", "data-digest")
    monkeypatch.setenv("FEWCLIP_DATA", str(tmp_path))
    assert RunConfig().run_key("weights", "data-digest") == here
