"""Backbones: offline weight resolution, clear errors, checkpoint round trips, device choice."""

from __future__ import annotations

import pytest
import torch

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
