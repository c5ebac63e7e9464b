"""The paper notebooks: committed clean with a parameters cell, and each one executes top to
bottom under papermill with tiny parameters (random test backbones, a small image folder, a
temporary cache, results store and output folder). Each smoke run checks what the notebook
produced: the runs in the results store, the tables and figures it wrote, its labels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from fewclip import claims, paper, plots
from fewclip import notebook as nb
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PAPER_NOTEBOOKS = ("claims", "clip_adapter", "dual", "difficulty", "mutual", "explore")
TIMEOUT = 300  # seconds per cell: a hung kernel fails the test instead of blocking CI


# --------------------------------------------------------------------------- committed files


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_parameters_first(path):
    name = path.stem
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == registered_kernel()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged"
    required = ("backbone", "pretrained", "seeds", "device", "data_root", "cache_dir")
    required += ("results", "output_dir", "workers", "scheduler", "threads")
    # papermill --help-notebook reads a type and a description from each parameter line
    lines = {}
    for line in code[0].source.splitlines():
        match = re.match(r"(\w+): ([\w\[\], ]+) = (.+?)  # \S", line)
        if match:
            lines[match[1]] = (match[2], match[3])
    for parameter in required:
        assert parameter in lines, f"parameter {parameter} missing, untyped or without a comment"
    assert lines["device"] == ("str", '"auto"')
    assert lines["workers"] == ("int", "1") and lines["scheduler"] == ("Optional[str]", "None")
    for cell in code:
        assert cell.outputs == [], f"{name}: committed with outputs"
        assert cell.execution_count is None, f"{name}: committed with execution counts"
    assert notebook.cells[0].cell_type == "markdown"


def registered_kernel() -> str:
    """The kernel name the set-up (the Makefile) registers with ipykernel."""
    found = re.findall(r"ipykernel install .*--name (\S+)", (ROOT / "Makefile").read_text())
    assert len(set(found)) == 1, f"the Makefile must register one kernel name, found {found}"
    return found[0]


def test_notebooks_name_the_kernel_the_set_up_registers():
    # a fresh JupyterLab's python3 is not the environment fewclip is installed in
    assert registered_kernel() == "fewclip"


def test_every_notebook_in_the_folder_is_covered():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(PAPER_NOTEBOOKS)


def test_mutual_says_tomm_is_our_interpretation():
    first = nbformat.read(NOTEBOOKS / "mutual.ipynb", as_version=4).cells[0]
    assert first.cell_type == "markdown" and "OUR INTERPRETATION" in first.source


# --------------------------------------------------------------------------- helpers


def test_paths_resolve_from_the_root_and_from_notebooks(monkeypatch, tmp_path):
    for cwd in (ROOT, NOTEBOOKS):
        monkeypatch.chdir(cwd)
        assert nb.project_root() == ROOT
        assert nb.resolve("data") == str(ROOT / "data")
    assert nb.resolve(str(tmp_path)) == str(tmp_path)
    assert nb.resolve(None) is None
    assert f"the project root, `{ROOT}`" in nb.paths_note()


def test_outside_the_checkout_paths_resolve_against_the_working_directory(monkeypatch, tmp_path):
    """papermill run from another folder must not read and write in the installed checkout."""
    monkeypatch.chdir(tmp_path)
    assert nb.project_root() == tmp_path.resolve()
    assert nb.resolve("runs/results.sqlite") == str(tmp_path.resolve() / "runs/results.sqlite")
    assert "the working directory" in nb.paths_note() and str(tmp_path.resolve()) in nb.paths_note()
    # a checkout found above the working directory is the root
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "data").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert nb.project_root() == tmp_path.resolve()


def test_listify_accepts_what_papermill_passes():
    assert nb.listify(8, int) == [8]
    assert nb.listify("[1, 2, 4]", int) == [1, 2, 4]
    assert nb.listify("1,2", int) == [1, 2]
    assert nb.listify("fashion_mnist") == ["fashion_mnist"]
    assert nb.listify(None) == []


def test_model_banner_says_what_made_the_numbers():
    random = nb.model_banner("fewclip-test-rn", "none", ["emoji_openmoji_subcategory"])
    assert "RANDOMLY INITIALISED" in random and "NOT meaningful" in random
    assert "NOT the papers' benchmarks" in random
    assert "RANDOM INIT" in nb.model_tag({"backbone": "fewclip-test-vit", "pretrained": "None"})
    if nb.model_kind("tiny-emoji-rn") == "toy":  # the committed checkpoint is there
        assert "NOT OpenAI CLIP" in nb.model_banner("tiny-emoji-rn")
        assert "toy-scale" in nb.model_tag("tiny-emoji-rn")
    assert nb.model_kind("RN50", "openai") in ("missing", "pretrained")


def test_paper_table_keeps_papers_and_ours_apart():
    published = paper.load(paper="clip_adapter", shots=16)
    assert len(published) == 11 and set(published["source"].str.len() > 0) == {True}
    ours = pd.DataFrame(
        {
            "paper": "ours",
            "method": ["clip_adapter"],
            "backbone": ["fewclip-test-rn"],
            "protocol": ["few_shot"],
            "dataset": ["emoji_openmoji_subcategory"],
            "shots": [16],
            "metric": ["acc"],
            "value": [12.5],
            "source": ["run store"],
        }
    )
    table = paper.side_by_side(published, ours, model="test model")
    groups = set(table.columns.get_level_values(0))
    assert groups == {"paper: RN50 (OpenAI CLIP)", "ours: test model", "paper"}
    assert table[("ours: test model", "emoji_openmoji_subcategory")].iloc[0] == 12.5
    assert "imagenet" not in table["ours: test model"].columns
    assert "Tip-Adapter exp.log" in table[("paper", "source")].iloc[0]
    assert "NOT comparable" in paper.caption(published, ours, "test model")
    # two papers reporting the same cell get a column group each, never an average
    both = paper.load(method="cocoop", protocol="base_to_new", dataset="average", metric="hm")
    split = paper.side_by_side(both, ours.iloc[:0], index=("method", "metric"))
    assert sorted(split.iloc[0].drop(("paper", "source")).tolist()) == sorted(both["value"])


# --------------------------------------------------------------------------- smoke runs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A data root with two small image folders, plus a shared cache."""
    root = tmp_path_factory.mktemp("notebooks")
    data = root / "data"
    coloured_squares(data / "squares", num_classes=6, per_class=20, seed=0)
    coloured_squares(data / "squares_b", num_classes=4, per_class=16, seed=1, offset=4)
    return {"root": root, "data": str(data), "cache": str(root / "cache")}


def execute(name: str, env, tmp_path, cwd=ROOT, **parameters):
    """Run notebooks/<name>.ipynb with papermill; returns (executed notebook, store, out)."""
    results, out = tmp_path / "results.sqlite", tmp_path / "out"
    parameters = {
        "data_root": env["data"],
        "cache_dir": env["cache"],
        "results": str(results),
        "output_dir": str(out),
        "seeds": [1],
        **parameters,
    }
    executed = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(executed),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(cwd),
        progress_bar=False,
        execution_timeout=TIMEOUT,
    )
    notebook = nbformat.read(executed, as_version=4)
    overlaps = out / plots.OVERLAPS_FILE  # written by plots.save for any figure with colliding text
    assert not overlaps.is_file(), f"{name}: figures with overlapping text: {overlaps.read_text()}"
    return notebook, ResultStore(results).to_frame(), out


def outputs(notebook, kind: str) -> list:
    """Every output of ``kind`` (an output type, or a mime type of display outputs)."""
    found = []
    for cell in notebook.cells:
        for o in cell.get("outputs", []):
            if o.output_type == kind:
                found.append(o)
            elif kind in o.get("data", {}):
                found.append(o["data"][kind])
    return found


def leaked(notebook) -> list[str]:
    """Plain-text results a hidden-code page would show with nothing around them (a function's
    return value at the end of a cell, e.g. a string or a list)."""
    return [
        o["data"]["text/plain"][:80]
        for o in outputs(notebook, "execute_result")
        if set(o.get("data", {})) == {"text/plain"}
    ]


def text_of(notebook) -> str:
    return "\n".join(outputs(notebook, "text/markdown") + outputs(notebook, "text/html"))


def conclusions_of(notebook) -> list[str]:
    """The sentences the notebook's conclusions box says (the published page opens with them)."""
    from fewclip.notebook import CONCLUSIONS_METADATA

    return [
        s
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        for s in o.get("metadata", {}).get(CONCLUSIONS_METADATA) or []
    ]


def test_clip_adapter_notebook(env, tmp_path):
    notebook, store, out = execute(
        "clip_adapter",
        env,
        tmp_path,
        backbone="fewclip-test-rn",
        pretrained="none",
        datasets=["folder:squares", "folder:no_such_folder"],  # the second one fails
        shots=[1, 2],
        epochs=2,
        tip_f_epochs=2,
        alphas=[0.0, 1.0],
        alpha_shots=2,
        augment_views=1,
    )
    assert not outputs(notebook, "error")  # failed runs are reported, not raised
    assert "run(s) failed" in text_of(notebook)
    failed = [t for t in outputs(notebook, "text/plain") if "no_such_folder" in t]
    assert failed and "DatasetError" in failed[0]
    assert set(store["dataset"]) == {"folder:squares"}
    labels = store["variant"].where(store["variant"] != "", store["method"])
    counts = labels.value_counts().to_dict()
    assert counts["zero_shot"] == 1 and counts["linear_probe"] == 2
    assert counts["tip_adapter"] == 2 and counts["tip_adapter_f"] == 2
    assert counts["CLIP-Adapter (text)"] == 2 and counts["CLIP-Adapter (both)"] == 2
    assert counts["CLIP-Adapter (visual)"] == 2  # the curve (alpha 0.2)
    assert counts["CLIP-Adapter (visual), alpha=0"] == counts["CLIP-Adapter (visual), alpha=1"] == 1
    assert (store["model_label"].str.contains("random init")).all()
    assert "RANDOMLY INITIALISED" in text_of(notebook)
    assert "NOT comparable one-to-one" in text_of(notebook)
    for f in ("few_shot_curves.png", "residual_ratio.png", "few_shot_summary.csv"):
        assert (out / f).is_file()
    versus = pd.read_csv(out / "paper_vs_ours.csv", header=[0, 1], index_col=[0, 1])
    assert ("paper", "source") in versus.columns
    assert ("ours: fewclip-test-rn, RANDOM INIT: numbers are not meaningful", "folder:squares") in (
        versus.columns
    )
    text = text_of(notebook)
    assert "How to read this report" in text and text.count("Welch-Satterthwaite") == 1
    assert not leaked(notebook)
    assert "Conclusions (from the numbers below)" in text and "Setup." in text
    assert "Shots per class: 1, 2." in text  # the text says what ran


def test_dual_notebook_from_the_command_line_with_int_shots(env, tmp_path):
    """As documented: ``papermill notebooks/dual.ipynb out.ipynb -p shots 8`` from the root."""
    results, out, executed = tmp_path / "r.sqlite", tmp_path / "out", tmp_path / "dual.ipynb"
    command = [sys.executable, "-m", "papermill", "notebooks/dual.ipynb", str(executed)]
    command += ["-p", "shots", "2", "-p", "backbone", "fewclip-test-rn", "-p", "pretrained"]
    command += ["none", "-p", "epochs", "2", "-p", "tip_f_epochs", "2", "-p", "augment_views"]
    command += ["1", "-y", "datasets: [folder:squares]", "-y", "lams: [0.0, 1.0]"]
    command += ["-y", "label_noises: [0.0, 0.5]", "-y", "noise_methods: [tip_adapter]"]
    command += ["-y", "curve_shots: [1, 2]", "-y", "curve_datasets: [folder:squares]"]
    command += ["-y", "curve_methods: [zero_shot, tip_adapter, linear_probe]"]
    command += ["-y", "clip_adapter_options: {epochs: 1}", "-p", "seeds", "[1, 2]"]
    command += ["-p", "dg_source", "folder:squares", "-y", "dg_targets: [folder:squares]"]
    fast_peers = "{ape_t: {epochs: 1}, taskres: {epochs: 1}, lp_pp: {epochs: 2}"
    command += ["-y", f"peer_options: {fast_peers}, clap: {{epochs: 1}}, zs_lp: {{epochs: 1}}}}"]
    command += ["-p", "data_root", env["data"], "-p", "cache_dir", env["cache"]]
    command += ["-p", "results", str(results), "-p", "output_dir", str(out)]
    command += ["--no-progress-bar", "--execution-timeout", str(TIMEOUT)]
    # no --kernel: the notebook's own kernelspec, registered as the Makefile does, but into a
    # temporary prefix (this interpreter) so the test neither needs nor alters the user's kernels
    prefix = tmp_path / "kernels"
    install = [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix)]
    subprocess.run([*install, "--name", registered_kernel()], check=True, capture_output=True)
    environ = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    notebook = nbformat.read(executed, as_version=4)
    assert not outputs(notebook, "error")
    store = ResultStore(results).to_frame()
    assert (store["shots"].isin([0, 1, 2])).all()
    dual = store[store["method"] == "dual_adapter"]
    expected = {"DualAdapter (full)", "positive only", "negative only", "no soft labels"}
    expected |= {"no pseudo-negative cache", "training-free", "lam fixed at 0", "lam fixed at 1"}
    assert set(dual["variant"]) == expected | {"DualAdapter v2 (SimNL)"}
    noise = store["config"].map(lambda c: c["label_noise"])
    assert set(noise) == {0.0, 0.5} and set(store.loc[noise > 0, "method"]) == {
        "dual_adapter",
        "tip_adapter",
    }
    # tables with intervals over the two seeds; v2 - v1 paired
    versions = pd.read_csv(out / "versions.csv")
    assert set(versions["n_seeds"]) == {2} and (versions["ci_low"] <= versions["mean"]).all()
    assert len(pd.read_csv(out / "v2_minus_v1.csv")) == 1
    curves = pd.read_csv(out / "few_shot_curves.csv")
    assert set(curves["shots"]) == {0, 1, 2} and "DualAdapter (full)" in set(curves["label"])
    dg = pd.read_csv(out / "domain_generalisation.csv")
    assert set(dg["target"]) == {"folder:squares (source)", "folder:squares"}
    chosen = pd.read_csv(out / "chosen.csv")
    assert {"beta", "alpha", "lam"} <= set(chosen.columns) and len(chosen) == 12
    assert chosen.loc[chosen["label"] == "positive only", "lam"].iloc[0] == 1.0
    gains = pd.read_csv(out / "per_class_gains.csv")
    assert len(gains) == 6 and {"class", "gain"} <= set(gains.columns)
    lam = pd.read_csv(out / "lam_sweep.csv", index_col=0)
    assert list(lam.columns.astype(float)) == [0.0, 1.0]
    # the peers section: APE, APE-T and the other feature-level peers beside the full model
    peers = {"ape", "ape_t", "taskres", "gda", "lp_pp", "clap"}
    assert peers <= set(store["method"])
    clap = store[store["method"] == "clap"]
    assert set(clap["variant"]) == {"", "ZS-LP"}
    assert set(
        clap.loc[clap["variant"] == "ZS-LP", "config"].map(lambda c: c["options"]["constraint"])
    ) == {"none"}
    text = text_of(notebook)
    assert "## DualAdapter against APE, APE-T and the feature-level peers" in "\n".join(
        c.source for c in notebook.cells if c.cell_type == "markdown"
    )
    assert "DualAdapter minus each peer" in text
    assert "Validation: few-shot val" in text  # every caption names the validation mode
    summary = pd.read_csv(out / "peers.csv")
    labels = {"DualAdapter (full)", "ZS-LP", *peers}
    assert labels <= set(summary["label"])
    assert set(summary.loc[summary["label"].isin(labels), "n_seeds"]) == {2}
    assert (summary["ci_low"] <= summary["mean"]).all() and (
        summary["mean"] <= summary["ci_high"]
    ).all()
    versus = pd.read_csv(out / "dual_minus_peers.csv")
    assert set(versus["b"]) == labels - {"DualAdapter (full)"} and set(versus["a"]) == {
        "DualAdapter (full)"
    }
    assert (versus["n_seeds"] == 2).all() and (versus["ci_low"] <= versus["diff"]).all()
    assert (out / "peers.png").is_file()
    assert not (out / plots.OVERLAPS_FILE).is_file(), (out / plots.OVERLAPS_FILE).read_text()
    assert "How to read this report" in text and text.count("Welch-Satterthwaite") == 1
    assert not leaked(notebook)
    assert "Conclusions (from the numbers below)" in text and "Setup." in text
    assert "NaN" not in text


def test_difficulty_notebook(env, tmp_path):
    notebook, store, out = execute(
        "difficulty",
        env,
        tmp_path,
        backbone="fewclip-test-vit",
        pretrained="none",
        datasets=["folder:squares", "folder:squares_b"],
        b2n_datasets=["folder:squares"],
        shots=1,
        seeds=[1, 2],
        ensembles=["both", "none"],
        methods=["zero_shot", "coop", "prograd", "maple"],
        cross_source="folder:squares",
        cross_targets=["folder:squares_b"],
        cross_methods=["zero_shot", "prograd"],
        alphas=[0.0, 0.5],
        apex_epochs=2,
        coop_epochs=2,
        prograd_epochs=1,
        maple_epochs=1,
        clip_adapter_epochs=1,
        augment_views=1,
        dataset_map={
            "fashion_mnist": "folder:squares_b",
            "tuxpaint_photos": "folder:squares_b",
            "emoji_openmoji_subcategory": "folder:squares",
            "emoji_subcategory_b2n": "folder:squares",
            "animal_mnist": "folder:squares_b",
            "emoji_unseen_subcategory": "folder:squares",
        },
    )
    assert not outputs(notebook, "error")
    # the ledger's APEX claims at the ledger's configuration (4 epochs), as the claims report
    ledger = pd.read_csv(out / "ledger_verdicts.csv").set_index("id")
    assert set(ledger.index) == set(claims.load().query("paper == 'apex'")["id"])
    # a row with its own seed count (noise-dominated) ran on it; the others on the two given
    counts = claims.load().set_index("id")["seeds"]
    ran = ledger.loc[ledger["verdict"] != "not run", "n_seeds"]
    assert {int(n) for i, n in ran.items() if counts[i]} == {10}
    assert {int(n) for i, n in ran.items() if not counts[i]} == {2}
    apex_epochs = store.loc[store["method"] == "apex", "config"].map(
        lambda c: c["options"].get("epochs")
    )
    # the report's own (labelled extra), the ledger's ablations (4) and headline rows (no
    # epochs option: the official schedule)
    assert set(apex_epochs.dropna().astype(int)) == {2, 4} and apex_epochs.isna().any()
    assert "Extra setting, not the ledger's configuration" in text_of(notebook)
    difficulty = pd.read_csv(out / "difficulty.csv")
    assert set(difficulty["dataset"]) == {"folder:squares", "folder:squares_b"}
    assert (difficulty["RTD"] > 0).all() and difficulty["separability (intra/inter)"].notna().all()
    b2n = store[store["protocol"] == "base_to_new"]
    # one APEX training per seed serves every ensemble setting
    assert set(b2n["method"]) == {"apex", "coop", "prograd", "maple", "zero_shot"} | {
        "clip_adapter", "cocoop"  # the ledger's Table 2 rows
    }  # fmt: skip
    report = b2n[b2n["config"].map(lambda c: c["options"].get("epochs") not in (4, None))]
    assert (report["method"] == "apex").sum() == 2 and b2n["hm"].notna().all()
    hm = pd.read_csv(out / "base_to_new_HM.csv")
    assert {"APEX (both)", "APEX (none)", "coop", "maple", "zero_shot"} <= set(hm["label"])
    assert (hm["ci_low"] <= hm["mean"]).all() and (hm["mean"] <= hm["ci_high"]).all()
    fixed = pd.read_csv(out / "fixed_alpha.csv")
    assert set(fixed["alpha"].astype(str)) == {"0", "0.5", "adaptive"}
    curves = pd.read_csv(out / "training_curves.csv")
    assert set(curves["label"]) == {"apex", "coop", "maple"} and set(curves["epoch"]) == {0, 1}
    chosen = pd.read_csv(out / "chosen_epochs.csv")
    assert set(chosen["runs"]) == {2}
    assert "chose epoch 0 in" in text_of(notebook)
    assert (out / "visual_vs_text.csv").is_file()
    assert "maple" in (out / "paper_vs_ours_base_to_new.csv").read_text()  # APEX's Table 2 row
    # the cross-dataset half of Table 2: APEX beside its baselines, with intervals
    cross = store[store["protocol"] == "cross_dataset"]
    assert set(cross["method"]) == {"apex", "prograd", "zero_shot"}
    table = pd.read_csv(out / "cross_dataset.csv")
    assert {"folder:squares_b", "target mean"} <= set(table["target"])
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()
    versus = (out / "paper_vs_ours_cross_dataset.csv").read_text()
    assert "prograd" in versus and "folder:squares_b" in versus
    text = text_of(notebook)
    assert "How to read this report" in text and text.count("Welch-Satterthwaite") == 1
    assert not leaked(notebook)
    assert "Conclusions (from the numbers below)" in text and "Setup." in text
    assert "Out[" not in text and "NaN" not in text


def test_mutual_notebook(env, tmp_path):
    notebook, store, out = execute(
        "mutual",
        env,
        tmp_path,
        backbone="fewclip-test-vit",
        pretrained="none",
        datasets=["folder:squares"],
        shots=1,
        epochs=2,
        seeds=[1, 2],
        row_seeds=False,  # TOMM's rows' own 10 seeds (cost); the difficulty test keeps them
        map_images=2,
        dataset_map={"emoji_name_b2n": "folder:squares", "emoji_subcategory_b2n": "folder:squares"},
    )
    assert not outputs(notebook, "error")
    assert "OUR INTERPRETATION" in text_of(notebook)
    ablations = {"CoOp", "CoCoOp", "CTP only", "TFT only", "CTP + TFT"}
    # TOMM's peers beside it, and zero-shot ("": no variant) for the base check
    ledger = pd.read_csv(out / "ledger_verdicts.csv")  # TOMM's claims, the ledger's settings
    assert set(ledger["id"]) == set(claims.load().query("paper == 'tomm'")["id"])
    store = store[store["config"].map(lambda c: c["options"].get("epochs") != 4)]
    assert set(store["variant"]) == ablations | {"KgCoOp", "ProDA", ""}
    methods = dict(zip(store["variant"], store["method"], strict=True))
    assert methods[""] == "zero_shot"
    assert {methods[a] for a in ablations} == {"tomm"}
    assert (methods["KgCoOp"], methods["ProDA"]) == ("kgcoop", "proda")
    assert store["hm"].notna().all()
    ablations = pd.read_csv(out / "ablations.csv")
    assert {"KgCoOp", "ProDA"} <= set(ablations["label"])
    assert set(ablations["metric"]) == {"base", "new", "HM"}
    assert (ablations["ci_low"] <= ablations["mean"]).all()
    text = text_of(notebook)
    assert "How to read this report" in text and text.count("Welch-Satterthwaite") == 1
    assert not leaked(notebook)
    assert "Conclusions (from the numbers below)" in text and "Setup." in text
    assert "NaN" not in text
    assert (ablations["mean"] <= ablations["ci_high"]).all()
    assert len(pd.read_csv(out / "paired_differences.csv"))
    curves = pd.read_csv(out / "training_curves.csv")
    tft = curves[curves["label"].isin(["TFT only", "CTP + TFT"])]
    assert tft["tft_weight"].notna().all() and len(tft)
    attention = pd.read_csv(out / "patch_attention.csv")
    assert (attention["min"] >= 0).all() and (attention["max"] <= 1).all()
    assert (out / "patch_attention.png").is_file() and (out / "training_curves.png").is_file()


def test_explore_notebook_from_the_notebooks_folder(env, tmp_path):
    notebook, store, _ = execute(
        "explore",
        env,
        tmp_path,
        cwd=NOTEBOOKS,  # as JupyterLab runs it
        backbone="fewclip-test-rn",
        pretrained="none",
        prefill_datasets=["folder:squares"],
        prefill_methods=["zero_shot", "tip_adapter"],
        prefill_shots=[1, 2],
        examples=4,
    )
    assert not outputs(notebook, "error")
    assert len(store) == 3  # the prefill sweep: zero-shot + Tip-Adapter at two shots
    assert outputs(notebook, "application/vnd.jupyter.widget-view+json")
    assert len(outputs(notebook, "image/png")) >= 3  # curves, per-class, predictions
    assert "RANDOMLY INITIALISED" in text_of(notebook)


def test_explore_widget_callbacks(env, tmp_path, monkeypatch):
    """The widget callbacks (never run under papermill, which only renders the widgets): the
    notebook's code runs in this process, then the controls are changed and redrawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    cells = nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4).cells
    code = [c.source for c in cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # the defaults, then this test's parameters
    namespace.update(
        backbone="fewclip-test-rn",
        pretrained="none",
        prefill_datasets=["folder:squares", "folder:squares_b"],
        prefill_methods=["zero_shot", "tip_adapter"],
        prefill_shots=[1],
        examples=2,
        predict=False,
        data_root=env["data"],
        cache_dir=env["cache"],
        results=str(tmp_path / "r.sqlite"),
        output_dir=str(tmp_path / "out"),
    )
    for source in code[1:]:
        exec(source, namespace)
    explorer, views = namespace["explorer"], namespace["views"]
    other = next(d for d in views.datasets_of("fewclip-test-rn") if d != explorer.w_dataset.value)
    explorer.w_dataset.value = other  # refreshes the options and redraws
    assert explorer.w_run.options and set(explorer.w_labels.value) == {"zero_shot", "tip_adapter"}
    explorer.w_run.value = "tip_adapter"
    explorer.w_shots.value = 1
    explorer.w_predict.click()
    # what the callbacks drew: the curves of the other dataset, its per-class chart and
    # the refitted run's predictions, each a PNG in its output area
    for out in (explorer.curves_out, explorer.per_class_out, explorer.predictions_out):
        assert "image/png" in out.outputs[0]["data"], out.outputs
    assert other in explorer.curves_out.outputs[1]["data"]["text/markdown"]


def test_claims_notebook(env, tmp_path, test_rn, test_vit):
    from fewclip.backbones import save_checkpoint

    second_checkpoint = save_checkpoint(test_rn.model, tmp_path / "second.safetensors")
    second_vit = save_checkpoint(test_vit.model, tmp_path / "second_vit.safetensors")
    picked = [
        "clip_adapter.beats_zero_shot",
        "dual_adapter.v2_robust_to_label_noise",
        "apex.beats_zero_shot_hm",  # a "vit" claim
    ]
    notebook, store, out = execute(
        "claims",
        env,
        tmp_path,
        backbone="fewclip-test-rn",
        backbone_vit="fewclip-test-vit",
        pretrained="none",
        seeds=[1, 2],
        row_seeds=False,  # the SimNL row's own 10 seeds: tests/test_claims.py
        ids=picked,
        dataset_map={
            "emoji_openmoji_subcategory": "folder:squares",
            "emoji_subcategory_b2n": "folder:squares",  # APEX's row pools three tasks
            "fashion_mnist": "folder:squares_b",
            "animal_mnist": "folder:squares_b",
        },
        shots_override=2,
        augment_views=1,
        second_checkpoint=str(second_checkpoint),
        second_checkpoint_vit=str(second_vit),
    )
    assert not outputs(notebook, "error")
    verdicts = pd.read_csv(out / "verdicts.csv").set_index("id")
    # the claims again on each backbone's second checkpoint, and how the two verdicts compare
    agreement = pd.read_csv(out / "agreement.csv").set_index("id")
    assert list(agreement.index) == picked
    assert set(agreement["agreement"]) <= {
        claims.AGREE, claims.PARTLY, claims.NEITHER, claims.DISAGREE, claims.NOT_COMPARED
    }  # fmt: skip
    assert list(agreement["verdict_first"]) == list(verdicts.loc[picked, "verdict"])
    second = pd.read_csv(out / "verdicts_second_checkpoint.csv")
    assert (second["n_seeds"] == 2).all()
    said = conclusions_of(notebook)
    assert any(
        s.startswith("On a second, independently pretrained checkpoint (`fewclip-test-rn`, "
                     "checkpoint `second.safetensors`")
        and "`fewclip-test-vit`, checkpoint `second_vit.safetensors`" in s
        for s in said
    ), said  # fmt: skip
    # every caveat is among the conclusions, none cut; both backbones had a second checkpoint
    assert "Every verdict is about this model and these offline tasks" in said[1]
    assert not any("rest on one pretraining run" in s for s in said)
    assert list(verdicts.index) == picked
    ran = (*claims.TESTED, claims.UNTESTED)  # random weights may give A = B
    assert verdicts.loc[picked[0], "verdict"] in ran
    assert verdicts.loc[picked[0], "n_seeds"] == 2 == verdicts.loc[picked[1], "n_seeds"]
    assert verdicts.loc[picked[1], "verdict"] in ran  # SimNL: a drop under label noise
    assert verdicts.loc[picked[2], "verdict"] in ran
    assert {"se", "df", "p_holm", "verdict_holm", "test_images"} <= set(verdicts.columns)
    assert "At 2 seeds the nominal 95% interval covers" in text_of(notebook)
    assert "Mean +- std over seeds" in text_of(notebook)
    assert set(store["method"]) >= {"clip_adapter", "zero_shot"}
    text = text_of(notebook)
    assert text.count("Welch-Satterthwaite") == 1  # the interval's method is stated once
    assert not leaked(notebook)
    assert "Conclusions (from the numbers below)" in text and "3 claims:" in text
    assert "background-color" in text  # verdicts keep their colours in the one table style


def test_claims_notebook_refuses_a_second_checkpoint_at_paper_scale(env, tmp_path):
    """The second checkpoints rerun the tiny models' claims; at paper scale the notebook
    stops in one sentence before any run."""
    with pytest.raises(pm.PapermillExecutionError, match="leave them unset with profile='paper'"):
        execute("claims", env, tmp_path, profile="paper", second_checkpoint="some.safetensors")


def test_published_reports_name_no_path_of_the_build_machine(monkeypatch):
    from fewclip.config import PUBLISHED_ROOT_VAR

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(PUBLISHED_ROOT_VAR, "1")
    note = nb.paths_note()
    assert "the project root" in note and str(ROOT) not in note
