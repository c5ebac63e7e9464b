"""CONTRIBUTING.md's worked examples stay true: its Python blocks (a method, a dataset) run as
written, in a fresh interpreter, and the new method fits on the new dataset through the run
API with the values the text promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def shapes_folder(data: Path) -> None:
    """The layout the dataset example reads: images/ and labels.csv (file,label,split)."""
    rng = np.random.default_rng(0)
    lines = ["file,label,split"]
    for c, name in enumerate(("circle", "square", "triangle")):
        colour = np.array([200 if i == c else 30 for i in range(3)])
        for i, split in enumerate(["train"] * 3 + ["val"] * 2 + ["test"] * 2):
            pixels = np.clip(colour + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = data / "shapes" / "images" / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            lines.append(f"images/{path.name},{name},{split}")
    (data / "shapes" / "labels.csv").write_text("\n".join(lines) + "\n")


DRIVER = """
import json, sys
from fewclip.config import RunConfig
from fewclip.data import load_dataset
from fewclip.methods import METHODS
from fewclip.runner import run

data, cache = sys.argv[1], sys.argv[2]
ds = load_dataset("shapes", data)
base = RunConfig(dataset="shapes", backbone="fewclip-test-rn", pretrained=None, shots=2,
                 augment_views=1, data_root=data, cache_dir=cache, progress=False)
blend = run(base.replace(method="nearest_centroid", options={"weight": 0.3}))
none = run(base.replace(method="nearest_centroid", options={"weight": 0.0}))
zero = run(base.replace(method="zero_shot", shots=0))
try:
    run(base.replace(method="nearest_centroid", options={"weight": 2.0}))
    bad = ""
except ValueError as error:
    bad = str(error)
print(json.dumps({
    "classes": ds.classnames, "sizes": [len(ds.train), len(ds.val), len(ds.test)],
    "default": METHODS["nearest_centroid"].Options().weight,
    "blend": blend["accuracy"], "chosen": blend["chosen"],
    "none": none["accuracy"], "zero": zero["accuracy"], "bad": bad,
}))
"""


def test_the_worked_examples_run_as_written(tmp_path):
    method, dataset = python_blocks()
    assert "register_method" in method and "register_dataset" in dataset
    shapes_folder(tmp_path / "data")
    script = tmp_path / "examples.py"
    script.write_text(method + "\n" + dataset + "\n" + DRIVER)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["classes"] == ["circle", "square", "triangle"]
    assert out["sizes"] == [9, 6, 6]
    assert out["default"] == 0.5  # as the text says
    assert out["chosen"] == {"weight": 0.3}
    assert 0.0 <= out["blend"] <= 100.0
    assert out["none"] == out["zero"]  # weight 0 is zero-shot CLIP, as the text says
    assert "weight must be in [0, 1]" in out["bad"]


def test_project_files_are_there_and_agree():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = (ROOT / "CITATION.cff").read_text()
    assert f"version: {project['version']}" in citation and "license: MIT" in citation
    readme = (ROOT / "README.md").read_text()
    bibtex = (ROOT / "docs" / "citing.md").read_text()  # the README links it
    assert "(docs/citing.md)" in readme
    for arxiv in ("2110.04544", "2403.12964", "2311.15569", "2303.17169"):
        assert arxiv in citation and f"arXiv:{arxiv}" in readme and arxiv in bibtex, arxiv
    assert bibtex.count("@article{") + bibtex.count("@inproceedings{") == 4
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog and f"## {project['version']}" in changelog
