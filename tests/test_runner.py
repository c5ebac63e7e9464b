"""The run API end to end on a small image folder and random tiny backbones: every method,
every protocol, the results store's skip / force / no-partial-row rules, and sweeps."""

from __future__ import annotations

import pytest

from fewclip.config import RunConfig
from fewclip.methods import METHODS
from fewclip.metrics import harmonic_mean
from fewclip.prompting.toy import coloured_squares
from fewclip.results import ResultStore
from fewclip.runner import run, transfers_to_new_classes
from fewclip.sweep import grid, run_sweep

FAST = {
    "zero_shot": {},
    "ape": {"steps": (20, 5, 5)},
    "gda": {},
    "ape_t": {"epochs": 2, "steps": (20, 5, 1)},
    "clap": {"epochs": 2},
    "lp_pp": {"epochs": 5},
    "taskres": {"epochs": 2},
    "linear_probe": {"refine_steps": 0},
    "clip_adapter": {"epochs": 2},
    "tip_adapter": {},
    "tip_adapter_f": {"epochs": 2},
    "dual_adapter": {"epochs": 2},
    "coop": {"epochs": 2, "n_ctx": 2},
    "cocoop": {"epochs": 1, "batch_size": 8},
    "apex": {"epochs": 1},
    "tomm": {"epochs": 1, "batch_size": 8},
    "kgcoop": {"epochs": 1, "batch_size": 8},
    "prograd": {"epochs": 1, "n_ctx": 4},
    "proda": {"epochs": 1, "n_prompts": 4, "n_ctx": 2},
    "maple": {"epochs": 1, "batch_size": 4},
    "promptsrc": {"epochs": 1, "batch_size": 4},
    "clip_lora": {"iterations": 2, "batch_size": 8},
}


#: Methods run on the test ViT (the others on the test ResNet).
VIT_METHODS = ("apex", "tomm", "cocoop", "coop", "maple", "promptsrc", "clip_lora")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """data root with folder ``squares`` (6 colour classes, 20 images each) and
    ``squares_b`` (4 other colours) for cross-dataset runs."""
    data = tmp_path_factory.mktemp("data")
    coloured_squares(data / "squares", num_classes=6, per_class=20, seed=0)
    coloured_squares(data / "squares_b", num_classes=2, per_class=20, seed=1, offset=6)
    return data


def config(root, method, **kw) -> RunConfig:
    arch = "fewclip-test-vit" if method in VIT_METHODS else "fewclip-test-rn"
    base = dict(
        method=method,
        dataset="folder:squares",
        backbone=arch,
        pretrained=None,
        shots=2,
        augment_views=2,
        options=FAST[method],
        data_root=str(root),
        cache_dir=str(root / "cache"),
        progress=False,
    )
    base.update(kw)
    return RunConfig(**base)


def test_fast_options_cover_every_method():
    assert set(FAST) == set(METHODS)


@pytest.mark.parametrize("method", sorted(FAST))
def test_every_method_runs_few_shot(root, method):
    record = run(config(root, method))
    assert 0.0 <= record["accuracy"] <= 100.0
    assert len(record["metrics"]["per_class_accuracy"]) == 6
    assert record["metrics"]["test_images"] == 6 * 6
    assert "random init" in record["model_label"]  # labelled as a meaningless model
    assert record["versions"]["torch"] and record["config"]["method"] == method
    difficulty = record["metrics"]["difficulty"]
    assert difficulty["num_classes"] == 6 and difficulty["rtd"] > 0
    if method != "zero_shot":
        assert record["metrics"]["train_images"] == 12
    expected_params = 0 if method in ("zero_shot", "tip_adapter", "ape", "gda") else 1
    assert (record["trainable_params"] > 0) == bool(expected_params)


def test_store_skips_forces_and_keeps_no_partial_row(root, tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "r.sqlite")
    cfg = config(root, "tip_adapter")
    first = run(cfg, store=store)
    assert not first["skipped"] and len(store) == 1
    again = run(cfg, store=store)
    assert again["skipped"] and again["accuracy"] == first["accuracy"]
    assert again["run_key"] == first["run_key"]
    # fields that do not change the result do not change the key
    moved = run(cfg.replace(progress=True, num_workers=0), store=store)
    assert moved["skipped"]
    forced = run(cfg, store=store, force=True)
    assert not forced["skipped"] and len(store) == 1

    # a run interrupted in the middle writes nothing
    from fewclip.methods.tip_adapter import TipAdapter

    def boom(self, data, seed=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(TipAdapter, "fit", boom)
    with pytest.raises(KeyboardInterrupt):
        run(cfg.replace(seed=2), store=store)
    assert len(store) == 1


def test_options_equal_as_the_method_reads_them_share_a_run_key(root, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    as_int = run(config(root, "tip_adapter", options={"init_alpha": 1}), store=store)
    as_float = run(config(root, "tip_adapter", options={"init_alpha": 1.0}), store=store)
    assert as_float["skipped"] and as_float["run_key"] == as_int["run_key"]
    other = run(config(root, "tip_adapter", options={"init_alpha": 2}), store=store)
    assert not other["skipped"] and len(store) == 2


def test_same_seed_same_numbers(root):
    cfg = config(root, "dual_adapter")
    a, b = run(cfg), run(cfg)
    assert a["accuracy"] == b["accuracy"] and a["chosen"] == b["chosen"]
    assert a["metrics"]["per_class_accuracy"] == b["metrics"]["per_class_accuracy"]


@pytest.mark.parametrize("method", ["zero_shot", "clip_adapter", "coop", "apex"])
def test_base_to_new(root, method):
    record = run(config(root, method, protocol="base_to_new"))
    b, n = record["base_accuracy"], record["new_accuracy"]
    assert record["hm"] == pytest.approx(harmonic_mean(b, n))
    assert record["accuracy"] == record["hm"]
    assert record["metrics"]["base_classes"] == [0, 1, 2]
    assert record["metrics"]["new_classes"] == [3, 4, 5]
    assert record["metrics"]["base"]["test_images"] == record["metrics"]["new"]["test_images"]
    used = 0 if method == "zero_shot" else 3 * 2  # base classes only; zero-shot uses none
    assert record["metrics"]["train_images"] == used


def test_zero_shot_base_to_new_matches_the_halves(root):
    """Zero-shot learns nothing: its base (new) accuracy is the accuracy of s * f @ W over
    the base (new) class names alone, on the base (new) test images."""
    from fewclip.backbones import load_backbone
    from fewclip.data import load_dataset, subsample_classes
    from fewclip.features import FeatureCache, image_features, template_classifier
    from fewclip.metrics import accuracy

    record = run(config(root, "zero_shot", protocol="base_to_new"))
    backbone = load_backbone("fewclip-test-rn", None, device="cpu")
    cache = FeatureCache(None)
    dataset = load_dataset("folder:squares", root)
    for subset, key in (("base", "base_accuracy"), ("new", "new_accuracy")):
        half = subsample_classes(dataset, subset)
        f, y = image_features(backbone, half.test, cache, progress=False).dropped()
        w = template_classifier(backbone, half.classnames, half.templates, cache)
        assert record[key] == pytest.approx(accuracy(backbone.logit_scale * f @ w, y))


def test_per_class_methods_refuse_new_classes(root):
    for name in ("linear_probe", "tip_adapter", "tip_adapter_f", "dual_adapter"):
        assert not transfers_to_new_classes(METHODS[name])
        with pytest.raises(ValueError, match="cannot classify new classes"):
            run(config(root, name, protocol="base_to_new"))
    with pytest.raises(ValueError, match="cannot classify the classes of folder:squares_b"):
        run(
            config(
                root, "tip_adapter", protocol="cross_dataset", eval_datasets=["folder:squares_b"]
            )
        )


def test_cross_dataset_and_domain_generalisation(root):
    record = run(config(root, "coop", protocol="cross_dataset", eval_datasets=["folder:squares_b"]))
    assert set(record["metrics"]["transfer"]) == {"folder:squares_b"}
    # the same classes (a second copy of the source) can be scored by per-class methods
    record = run(
        config(
            root, "tip_adapter", protocol="domain_generalisation", eval_datasets=["folder:squares"]
        )
    )
    assert record["metrics"]["transfer"]["folder:squares"] == pytest.approx(record["accuracy"])
    with pytest.raises(ValueError, match="needs eval_datasets"):
        run(config(root, "coop", protocol="cross_dataset"))


def test_bad_input_messages(root):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run(config(root, "zero_shot").replace(method="nope"))
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        run(config(root, "zero_shot", dataset="nope"))
    with pytest.raises(ValueError, match="12 shots requested"):
        run(config(root, "tip_adapter", shots=12))


def test_sweep_reports_failures_and_reuses_the_store(root, tmp_path):
    store = tmp_path / "sweep.sqlite"
    base = config(root, "tip_adapter")
    configs = grid(base, shots=[1, 2]) + [base.replace(shots=50)]
    frame = run_sweep(configs, store, progress=False)
    assert frame["status"].tolist() == ["done", "done", "failed"]
    assert "50 shots requested" in frame["error"].iloc[2]
    again = run_sweep(configs[:2], store, progress=False)
    assert again["skipped"].tolist() == [True, True]
    assert again["accuracy"].tolist() == frame["accuracy"].iloc[:2].tolist()


def test_sweep_on_a_dask_cluster(root, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            configs = grid(config(root, "zero_shot"), seed=[1, 2])
            frame = run_sweep(configs, tmp_path / "dask.sqlite", scheduler=client, progress=False)
    finally:
        cluster.close()
    assert frame["status"].tolist() == ["done", "done"]
    assert len(ResultStore(tmp_path / "dask.sqlite")) == 2


def test_grid_merges_options():
    base = RunConfig(options={"epochs": 3})
    configs = grid(base, method=["coop", "apex"], options=[{"lr": 0.1}, {}])
    assert len(configs) == 4
    assert configs[0].options == {"epochs": 3, "lr": 0.1} and configs[1].options == {"epochs": 3}


def test_fit_run_keeps_the_fitted_method(root):
    from fewclip.runner import fit_run

    fitted = fit_run(config(root, "tip_adapter"))
    assert fitted.method.chosen["beta"] == fitted.record["chosen"]["beta"]
    assert fitted.backbone.arch == "fewclip-test-rn" and fitted.dataset.num_classes == 6


def test_clip_adapter_defaults_to_the_single_official_prompt():
    from fewclip.data import Dataset
    from fewclip.runner import resolve_templates

    ensemble = ["a photo of a {}.", "a bad photo of a {}.", "art of the {}."]
    pets = Dataset("oxford_pets", ["cat"], [], [], [], list(ensemble))
    cfg = RunConfig(method="clip_adapter", dataset="oxford_pets")
    # CoOp's CUSTOM_TEMPLATES entry, as the released CLIP-Adapter code uses
    assert resolve_templates(cfg, pets) == ["a photo of a {}, a type of pet."]
    assert resolve_templates(cfg.replace(templates="default"), pets) == ensemble
    assert resolve_templates(cfg.replace(method="tip_adapter"), pets) == ensemble
    offline = Dataset("emoji_x", ["cat"], [], [], [], list(ensemble))
    assert resolve_templates(cfg, offline) == ensemble[:1]


def test_label_noise_val_and_dual_v2_through_the_run_api_and_cli(root, tmp_path, capsys):
    from fewclip.cli import main

    cfg = config(root, "dual_adapter", shots=4, cache_dir=str(tmp_path / "cache"))
    clean = run(cfg)
    noisy = run(cfg.replace(label_noise=0.5, options={"epochs": 2, "version": 2}))
    assert noisy["config"]["label_noise"] == 0.5 and noisy["metrics"]["flipped_labels"] > 0
    assert clean["metrics"]["flipped_labels"] == 0
    assert noisy["chosen"]["version"] == 2 and noisy["chosen"]["soft_temperature"] == 1.0
    assert noisy["run_key"] != clean["run_key"]
    # the noisy run encoded no new image: features are those of the clean sample
    files = sorted((tmp_path / "cache" / "image").rglob("*.pt"))
    run(cfg.replace(label_noise=0.3, seed=1))
    assert sorted((tmp_path / "cache" / "image").rglob("*.pt")) == files
    # every method takes noisy labels (here an encoder-level one)
    coop = run(config(root, "coop", label_noise=0.5))
    assert coop["metrics"]["flipped_labels"] > 0
    # the whole val split (4 per class in squares) instead of min(K, 4) = 2 per class
    full = run(cfg.replace(val="full", shots=2))
    assert full["config"]["val"] == "full" and full["metrics"]["val_images"] == 6 * 4
    assert run(cfg.replace(shots=2))["metrics"]["val_images"] == 6 * 2
    # the CLI takes both; a bad value is one sentence and a non-zero exit
    args = ["run", "--method", "zero_shot", "--dataset", "folder:squares", "--shots", "2",
            "--backbone", "fewclip-test-rn", "--pretrained", "none", "--data-root", str(root),
            "--cache-dir", str(tmp_path / "cache"), "--results", ""]  # fmt: skip
    assert main([*args, "--label-noise", "0.2", "--val", "full"]) == 0
    capsys.readouterr()
    assert main([*args, "--label-noise", "1.5"]) == 1
    assert "label_noise must be a probability" in capsys.readouterr().err
