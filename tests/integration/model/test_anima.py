"""Loading the frozen Anima from tiny twins in the real formats: prefixes, strict errors, velocity, layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima_probe.model.anima import load_anima
from anima_probe.model.files import ModelFileError
from anima_probe.model.text import encode_prompts
from anima_probe.model.tiny import DIT_FILE, write_tiny


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), prefix="net.", seed=0)


@pytest.fixture(scope="module")
def anima(twin):
    return load_anima(twin)


@pytest.mark.parametrize("prefix", ["net.", "model.diffusion_model.", "none"])
def test_every_prefix_round_trips_to_the_same_velocity(tmp_path, prefix, anima):
    folder = write_tiny(tmp_path, prefix=prefix, seed=0, with_vae=False)
    other = load_anima(folder, with_vae=False)
    x, ctx = torch.randn(2, 16, 8, 8), torch.randn(2, 512, 32)
    sigma = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert torch.equal(other.velocity(x, sigma, ctx), anima.velocity(x, sigma, ctx))


def _corrupt(twin, tmp_path, edit) -> Path:
    folder = write_tiny(tmp_path, prefix="net.", seed=0, with_vae=False)
    path = folder / DIT_FILE
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("net.blocks.1.mlp.layer2.weight"), "1 missing: net.blocks.1.mlp.layer2.weight"),
    (lambda s: s.__setitem__("net.blocks.0.extra.weight", torch.zeros(2)), "1 unexpected: net.blocks.0.extra.weight"),
    (lambda s: s.__setitem__("net.final_layer.linear.weight", torch.zeros(64, 63)), "mis-shaped"),
])
def test_strict_load_names_file_format_and_keys(twin, tmp_path, edit, message):
    folder = _corrupt(twin, tmp_path, edit)
    with pytest.raises(ModelFileError) as e:
        load_anima(folder, with_vae=False)
    assert message in str(e.value) and "anima-tiny.safetensors" in str(e.value) and "prefix 'net.'" in str(e.value)


def test_frozen_and_fixed(anima):
    assert not any(p.requires_grad for p in anima.transformer.parameters())
    assert not anima.transformer.training and not anima.adapter.training
    eps = {a.norm_q.eps for b in anima.transformer.transformer_blocks for a in (b.attn1, b.attn2)}
    assert eps == {1e-6}


def test_velocity_shape_finite_deterministic(anima):
    x, ctx = torch.randn(2, 16, 8, 12), encode_prompts(anima, ["a", "b"]).crossattn_emb
    with torch.no_grad():
        v1, v2 = anima.velocity(x, torch.tensor([0.1, 0.7]), ctx), anima.velocity(x, torch.tensor([0.1, 0.7]), ctx)
    assert v1.shape == x.shape and torch.isfinite(v1).all() and torch.equal(v1, v2)
    with pytest.raises(ValueError, match="multiple of the patch"):
        anima.velocity(torch.randn(1, 16, 7, 8), 0.5, ctx[:1])


def test_unknown_model_role_and_missing_folder(tmp_path):
    with pytest.raises(TypeError, match="unknown file roles"):
        load_anima(tmp_path, unet="x")
    with pytest.raises(FileNotFoundError, match="no dit"):
        load_anima(tmp_path)


def test_no_network_guard_is_active():
    import socket

    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)  # a documentation address


def test_diffusers_folder_layout_loads_to_the_same_velocity(tmp_path, twin, anima):
    """The Diffusers repo's layout (transformer/ with in_channels=16 + concat_padding_mask, text_conditioner/,
    text_encoder/, tokenizer/, t5_tokenizer/) loads without torchvision and matches the single file."""
    import shutil

    anima.transformer.register_to_config(in_channels=16, concat_padding_mask=True)
    try:
        anima.transformer.save_pretrained(tmp_path / "transformer")
    finally:
        anima.transformer.register_to_config(in_channels=17, concat_padding_mask=False)
    anima.adapter.save_pretrained(tmp_path / "text_conditioner")
    anima.text_encoder.save_pretrained(tmp_path / "text_encoder")
    shutil.copytree(twin / "qwen25_tokenizer", tmp_path / "tokenizer")
    shutil.copytree(twin / "t5_tokenizer", tmp_path / "t5_tokenizer")
    other = load_anima(tmp_path, with_vae=False)
    assert other.transformer.config.in_channels == 17 and not other.transformer.config.concat_padding_mask
    x, sigma = torch.randn(1, 16, 8, 8), torch.tensor([0.5])
    ctx = encode_prompts(anima, ["score_9, 1girl"]).crossattn_emb
    torch.testing.assert_close(encode_prompts(other, ["score_9, 1girl"]).crossattn_emb, ctx)
    with torch.no_grad():
        torch.testing.assert_close(other.velocity(x, sigma, ctx), anima.velocity(x, sigma, ctx))

