"""The feature-level peers in the reports and tools: `fewclip compare` and the explorer show
runs of every peer (ZS-LP as its own row), the compare table takes APE's and GDA's
published numbers from their own papers, and a caption names the validation mode when a
run saw no validation data (``val="none"``)."""

from __future__ import annotations

import pandas as pd
import pytest

from fewclip import notebook as nb
from fewclip.compare import _paper_number, compare_table
from fewclip.config import RunConfig
from fewclip.explorer import Views
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore
from fewclip.sweep import run_sweep

#: name -> (method, options): each peer at its cheapest setting; ZS-LP is CLAP unconstrained
PEERS = {
    "ape": ("ape", {"steps": (4, 4, 4)}),
    "ape_t": ("ape_t", {"epochs": 1, "steps": (4, 4, 4)}),
    "taskres": ("taskres", {"epochs": 1}),
    "gda": ("gda", {}),
    "lp_pp": ("lp_pp", {"epochs": 2}),
    "clap": ("clap", {"epochs": 1}),
    "ZS-LP": ("clap", {"epochs": 1, "constraint": "none"}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results store with one run of each peer (and zero-shot) on a small image folder."""
    root = tmp_path_factory.mktemp("peer_reports")
    coloured_squares(root / "data" / "squares", num_classes=4, per_class=8, seed=0)
    base = RunConfig(
        dataset="folder:squares",
        backbone="fewclip-test-rn",
        pretrained="none",
        shots=2,
        seed=1,
        augment_views=1,
        data_root=str(root / "data"),
        cache_dir=str(root / "cache"),
        progress=False,
    )
    configs = [base.replace(method="zero_shot", shots=0)]
    for label, (method, options) in PEERS.items():
        variant = label if label != method else ""
        configs.append(base.replace(method=method, variant=variant, options=options))
    path = root / "results.sqlite"
    frame = run_sweep(configs, str(path), progress=False)
    assert (frame["status"] == "done").all(), frame.get("error")
    return {"path": path, "data": str(root / "data")}


def test_compare_has_a_row_for_every_peer(store):
    frame = ResultStore(store["path"]).to_frame(expand=False)
    table = compare_table(frame, average=False)
    assert set(PEERS) | {"zero_shot"} == set(table["label"])
    clap = table[table["method"] == "clap"]
    assert sorted(clap["label"]) == ["ZS-LP", "clap"]  # two configurations, never merged
    assert table["mean"].between(0, 100).all() and (table["n_seeds"] == 1).all()


def test_the_explorer_selects_and_refits_a_peer(store):
    frame = nb.store_frame(str(store["path"]))
    views = Views(frame, data_root=store["data"])
    backbone, dataset = views.backbones()[0], views.datasets_of(views.backbones()[0])[0]
    assert set(PEERS) <= set(views.labels_of(backbone, dataset, "few_shot"))
    shown = views.predictions(backbone, dataset, "few_shot", "ZS-LP", 2, count=4)
    assert not any(isinstance(s, str) and "Could not refit" in s for s in shown)


def test_ape_and_gda_take_their_own_papers_numbers():
    for method, paper_name in (("ape", "ape"), ("ape_t", "ape"), ("gda", "gda")):
        row = {"method": method, "protocol": "few_shot", "dataset": "caltech101", "shots": 16}
        row["backbone"] = "RN50"
        number, backbone, source = _paper_number(row, "accuracy")
        assert number == number and source.startswith(f"{paper_name}:"), (method, source)


def test_val_modes_from_a_name_a_list_or_a_frame():
    assert nb.val_modes("none") == ["none"]
    assert nb.val_modes(["few_shot", "none", "few_shot"]) == ["few_shot", "none"]
    frame = pd.DataFrame({"config": [{"val": "full"}, None, {"val": "none"}]})
    assert nb.val_modes(frame) == ["full", "none"]
    assert nb.val_modes(pd.DataFrame({"val": ["few_shot"]})) == ["few_shot"]
    assert nb.val_modes(pd.DataFrame()) == []


def test_a_caption_names_val_none_always_and_the_others_on_request():
    assert "NO validation data" in nb.val_note("none")
    assert "val='none'" in nb.val_note(pd.DataFrame({"config": [{"val": "none"}]}))
    assert nb.val_note("few_shot") == "" and nb.val_note(pd.DataFrame()) == ""
    assert nb.val_note("few_shot", always=True) == (
        "Validation: few-shot val (min(K, 4) images per class)."
    )
    mixed = nb.val_note(pd.DataFrame({"val": ["few_shot", "none"]}))
    assert mixed.startswith("Validation differs") and "few-shot" in mixed and "NO" in mixed
