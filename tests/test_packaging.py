"""Packaging: environment.yml lists what pyproject.toml asks for."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    text = (ROOT / "environment.yml").read_text()
    listed = {
        _name(line.strip()[2:])
        for line in text.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- -e")
    }
    # dask[distributed] is spelled as two conda packages
    listed |= {"dask"} if {"dask", "distributed"} <= listed else set()
    missing = sorted(wanted - listed)
    assert not missing, f"environment.yml lacks {missing} (keep it in step with pyproject.toml)"
    assert "-e .[dev]" in text  # the pip section installs the package itself
