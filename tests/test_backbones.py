"""Backbones: offline weight resolution, clear errors, checkpoint round trips, device choice."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU

from fewclip import backbones
from fewclip.backbones import (
    UnknownBackboneError,
    WeightsNotFoundError,
    load_backbone,
    resolve_weights,
    save_checkpoint,
    select_device,
    select_precision,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""
    import urllib.request

    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    import open_clip.pretrained

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse, raising=False)


def test_missing_tag_weights_raise_one_clear_offline_error(tmp_path, no_network):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("RN50", "openai", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "RN50/openai" in msg and str(tmp_path) in msg
    assert "pretrained='/path/to/file.pt'" in msg and "allow_download=True" in msg


def test_tag_resolves_from_local_hf_cache(tmp_path, no_network):
    repo = tmp_path / "models--timm--resnet50_clip.openai"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    path = resolve_weights("RN50", "openai", cache_dir=str(tmp_path))
    assert path == str(snap / "open_clip_pytorch_model.bin")


def test_unknown_names_list_the_choices():
    with pytest.raises(UnknownBackboneError, match="tiny-emoji-rn"):
        load_backbone("RN5000", None)
    with pytest.raises(UnknownBackboneError, match="openai"):
        load_backbone("RN50", "no-such-tag")
    with pytest.raises(WeightsNotFoundError, match="checkpoint file not found"):
        load_backbone("fewclip-test-rn", "/nowhere/model.pt")


@pytest.mark.parametrize("suffix,half", [(".pt", False), (".safetensors", True)])
def test_checkpoint_round_trip_through_the_user_path(tmp_path, suffix, half):
    source = load_backbone("fewclip-test-vit", None, init_seed=7)
    path = save_checkpoint(source.model, tmp_path / f"model{suffix}", half=half)
    loaded = load_backbone("fewclip-test-vit", str(path))
    assert loaded.is_pretrained and loaded.weights_file == str(path)
    assert "random init" not in loaded.label
    images = torch.randn(3, 3, 32, 32)
    atol = 2e-2 if half else 1e-6
    assert torch.allclose(source.encode_images(images), loaded.encode_images(images), atol=atol)
    texts = ["a photo of a cat.", "an emoji of a dog."]
    assert torch.allclose(source.encode_text(texts), loaded.encode_text(texts), atol=atol)
    other = load_backbone("fewclip-test-vit", None, init_seed=8)
    assert not torch.allclose(other.encode_images(images), loaded.encode_images(images), atol=1e-2)


def test_random_init_is_labelled_and_seeded():
    a = load_backbone("fewclip-test-rn", None, init_seed=3)
    b = load_backbone("fewclip-test-rn", None, init_seed=3)
    assert "random init" in a.label and not a.is_pretrained
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.encode_images(x), b.encode_images(x))
    assert a.embed_dim == 32 and a.image_size == 32 and a.context_length == 32
    assert all(not p.requires_grad for p in a.model.parameters())


def test_project_weights_missing_file_names_the_rebuild_command(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(
        WeightsNotFoundError, match="python -m fewclip.pretrain --arch tiny-emoji-rn"
    ):
        resolve_weights("tiny-emoji-rn", "default")


def test_device_and_precision_selection():
    cpu = select_device("cpu")
    assert select_precision(cpu) == "fp32"
    assert select_precision(torch.device("cuda"), "auto") == "amp"
    with pytest.raises(ValueError, match="unknown precision"):
        select_precision(cpu, "fp8")
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


# --------------------------------------------------------------------------- activation


def activations(model: torch.nn.Module) -> set[type]:
    """The GELU-family activation classes inside a model."""
    kinds = (torch.nn.GELU, QuickGELU)
    return {type(m) for m in model.modules() if isinstance(m, kinds)}


@pytest.fixture
def openai_tag_is_cached(monkeypatch, fullsize_checkpoint, no_network):
    """The ``openai`` tag resolves (without downloading) to a locally saved random RN50."""
    path = fullsize_checkpoint("RN50")
    monkeypatch.setattr(backbones, "_cached_tag_file", lambda cfg, cache_dir: (path, path))
    return path


def test_openai_tag_builds_quickgelu_as_its_weights_were_trained(openai_tag_is_cached):
    built = load_backbone("RN50", "openai", device="cpu")
    assert built.weights_file == openai_tag_is_cached
    assert activations(built.model) == {QuickGELU}
    assert built.quick_gelu and built.describe()["activation"] == "QuickGELU"
    assert "quick_gelu=True" in built.activation_reason
    # "default" means openai outside the project's models
    assert backbones.decide_quick_gelu("RN50", "default", openai_tag_is_cached)[0] is True
    # the run key's identity names the activation, and equals the built backbone's
    assert built.identity.endswith("|quickgelu")
    assert backbones.weights_identity("RN50", "openai") == built.identity
    # the user can still ask for the architecture's own activation
    plain = load_backbone("RN50", "openai", device="cpu", quick_gelu=False)
    assert activations(plain.model) == {torch.nn.GELU} and plain.identity != built.identity
    # QuickGELU changes the features: the switch is not cosmetic
    texts = ["a photo of a cat."]
    assert not torch.allclose(built.encode_text(texts), plain.encode_text(texts), atol=1e-4)


def test_activation_of_names_files_and_the_user_switch(tmp_path, fullsize_checkpoint):
    path = fullsize_checkpoint("RN50")
    decide = backbones.decide_quick_gelu
    assert decide("RN50", None, None) == (False, "random init: the architecture's own activation")
    assert decide("RN50-quickgelu", None, None)[0] is True
    assert decide("RN50-quickgelu", path, path)[0] is True
    # an open_clip-format file keeps the architecture's activation; the user can override
    plain = load_backbone("RN50", path)
    assert activations(plain.model) == {torch.nn.GELU} and not plain.identity.endswith("gelu")
    forced = load_backbone("RN50", path, quick_gelu=True)
    assert activations(forced.model) == {QuickGELU} and forced.identity.endswith("|quickgelu")
    # a file found where open_clip caches the openai tag is that tag's weights
    cached = tmp_path / "clip" / "RN50.pt"
    cached.parent.mkdir()
    cached.symlink_to(path)
    assert backbones.tag_of_file("RN50", cached) == "openai"
    hub = tmp_path / "models--timm--resnet50_clip.openai" / "snapshots" / "x" / "m.safetensors"
    assert backbones.tag_of_file("RN50", hub) == "openai"
    assert backbones.tag_of_file("RN50", path) is None


def test_openai_format_files_are_detected(tmp_path, test_rn):
    """OpenAI's own format: a state dict with ``input_resolution`` etc., or TorchScript."""
    state = dict(test_rn.model.state_dict())
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    assert not backbones.is_openai_checkpoint(plain)
    openai = tmp_path / "openai.pt"
    torch.save({**state, "input_resolution": torch.tensor(32)}, openai)
    assert backbones.is_openai_checkpoint(openai)
    quick, reason = backbones.decide_quick_gelu("ViT-B-16", str(openai), str(openai))
    assert quick and "OpenAI-format" in reason
    assert backbones.decide_quick_gelu("ViT-B-16", str(plain), str(plain))[0] is False


def test_openai_torchscript_archive_loads_with_quickgelu(tmp_path, test_vit):
    """OpenAI distributes TorchScript archives, which open_clip's loader refuses under torch's
    weights_only default; they load here, as QuickGELU, with the same weights."""

    class Archive(torch.nn.Module):  # OpenAI's layout: the model's keys plus three entries
        def __init__(self, model):
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            for name, param in model.named_parameters(recurse=False):
                self.register_parameter(name, param)
            self.register_buffer("input_resolution", torch.tensor(32))

        def forward(self, x):
            return self.visual(x)

    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(Archive(test_vit.model), torch.randn(1, 3, 32, 32)).save(str(archive))
    assert backbones.is_torchscript_archive(archive) and backbones.is_openai_checkpoint(archive)
    loaded = load_backbone("fewclip-test-vit", str(archive), device="cpu")
    assert activations(loaded.model) == {QuickGELU}
    for key, value in test_vit.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
