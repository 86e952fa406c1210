"""Loading the frozen Anima from tiny twins in the real formats: round trips, strict errors, text, velocity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima_probe.model import dit_file as ckpt
from anima_probe.model.anima import load_anima
from anima_probe.model.flow import add_noise, denoised, shift_sigma, velocity_target
from anima_probe.model.text import encode_prompts
from anima_probe.model.tiny import DIT_FILE, write_tiny

TSV = Path(__file__).parents[2] / "support" / "anima_checkpoint_keys.tsv"


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), prefix="net.", seed=0)


@pytest.fixture(scope="module")
def anima(twin):
    return load_anima(twin)


def test_layout_of_full_config_is_the_published_key_list():
    rows = [line.rstrip("\n").split("\t") for line in TSV.open() if not line.startswith("#")]
    published = {k: tuple(ast.literal_eval(s)) for k, s in rows}
    dit = {k: v for k, v in published.items() if not k.startswith("llm_adapter.")}
    adapter = {k[len("llm_adapter."):]: v for k, v in published.items() if k.startswith("llm_adapter.")}
    c = ckpt.infer_dit_config(dit)
    assert (c.hidden, c.num_blocks, c.num_heads, c.in_channels, c.patch) == (2048, 28, 16, 16, 2)
    assert c == ckpt.ANIMA_DIT and ckpt.infer_adapter_config(adapter) == ckpt.ANIMA_ADAPTER
    assert ckpt.dit_layout(c) == dit
    assert ckpt.adapter_layout(ckpt.ANIMA_ADAPTER) == adapter
    assert len(published) == 685


@pytest.mark.parametrize("prefix", ["net.", "model.diffusion_model.", "none"])
def test_every_prefix_round_trips_to_the_same_velocity(tmp_path, prefix, anima):
    folder = write_tiny(tmp_path, prefix=prefix, seed=0, with_vae=False)
    other = load_anima(folder, with_vae=False)
    x, ctx = torch.randn(2, 16, 8, 8), torch.randn(2, 512, 32)
    sigma = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert torch.equal(other.velocity(x, sigma, ctx), anima.velocity(x, sigma, ctx))


def test_twin_files_are_deterministic(tmp_path, twin):
    again = load_file(str(write_tiny(tmp_path, prefix="net.", seed=0) / DIT_FILE))
    first = load_file(str(twin / DIT_FILE))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    other = load_file(str(write_tiny(tmp_path / "s1", prefix="net.", seed=1, with_vae=False) / DIT_FILE))
    assert not torch.equal(other["net.x_embedder.proj.1.weight"], first["net.x_embedder.proj.1.weight"])


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
    with pytest.raises(ckpt.CheckpointError) as e:
        load_anima(folder, with_vae=False)
    assert message in str(e.value) and "anima-tiny.safetensors" in str(e.value) and "prefix 'net.'" in str(e.value)


def test_truncated_and_foreign_files_fail_clearly(tmp_path, twin):
    data = (twin / DIT_FILE).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.tensor_shapes(cut)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a model")
    with pytest.raises(ckpt.CheckpointError, match="not a safetensors file"):
        ckpt.tensor_shapes(text)


def test_frozen_and_fixed(anima):
    assert not any(p.requires_grad for p in anima.transformer.parameters())
    assert not anima.transformer.training and not anima.adapter.training
    eps = {a.norm_q.eps for b in anima.transformer.transformer_blocks for a in (b.attn1, b.attn2)}
    assert eps == {1e-6}


def test_text_pad_rows_zero_and_batch_equals_single(anima):
    prompts = ["score_9, 1girl, solo, smile", "landscape", "a much longer prompt with many many tags, sky, sea"]
    batch = encode_prompts(anima, prompts, batch_size=3)
    assert batch.crossattn_emb.shape == (3, 512, 32)
    for i, p in enumerate(prompts):
        single = encode_prompts(anima, [p])
        n = int(batch.t5_mask[i].sum())
        assert batch.crossattn_emb[i, n:].abs().max() == 0  # zero-padded to 512 rows
        assert batch.prompt_embeds[i][~batch.qwen_mask[i]].abs().max() == 0
        torch.testing.assert_close(batch.crossattn_emb[i], single.crossattn_emb[0], atol=1e-5, rtol=1e-4)


def test_empty_prompt_policies_differ_as_the_references_do(anima):
    comfy = encode_prompts(anima, [""], empty_prompt="comfyui")
    diff = encode_prompts(anima, [""], empty_prompt="diffusers")
    assert comfy.t5_ids[0, 0] == 1 and int(comfy.t5_mask.sum()) == 1  # T5 gets [</s>]
    assert comfy.qwen_mask[0, 0] and not diff.qwen_mask[0, 0]  # ComfyUI reads its pad token, diffusers masks it
    assert not torch.allclose(comfy.crossattn_emb, diff.crossattn_emb)
    with pytest.raises(ValueError, match="empty_prompt"):
        encode_prompts(anima, [""], empty_prompt="other")


def test_velocity_shape_finite_deterministic(anima):
    x, ctx = torch.randn(2, 16, 8, 12), encode_prompts(anima, ["a", "b"]).crossattn_emb
    with torch.no_grad():
        v1, v2 = anima.velocity(x, torch.tensor([0.1, 0.7]), ctx), anima.velocity(x, torch.tensor([0.1, 0.7]), ctx)
    assert v1.shape == x.shape and torch.isfinite(v1).all() and torch.equal(v1, v2)
    with pytest.raises(ValueError, match="multiple of the patch"):
        anima.velocity(torch.randn(1, 16, 7, 8), 0.5, ctx[:1])


def test_flow_conventions_recover_x0():
    x0, noise, sigma = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0.0, 0.4, 1.0])
    x_t = add_noise(x0, noise, sigma)
    torch.testing.assert_close(denoised(x_t, velocity_target(x0, noise), sigma), x0)
    assert torch.allclose(shift_sigma(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([0.0, 0.75, 1.0]))


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
