"""Faults in the model files: an integer tensor, a non-finite weight, float64 storage, a stray key, files from two
different models, a latent DiT without a VAE. Each is one line naming the file and key (exit 2, nothing written),
except float64, which loads with a warning."""

from __future__ import annotations

import pytest
import torch

from anima_probe.model.files import load_tensors, save_tensors
from anima_probe.model.tiny import (
    DIT_FILE,
    TEXT_ENCODER_FILE,
    TINY_QWEN,
    TINY_VAE,
    tiny_qwen3,
    write_qwen3_file,
    write_tiny_vae,
)
from tests.support.faults import tree

KEY = "net.blocks.0.mlp.layer1.weight"


def _edit_dit(twin, edit) -> None:
    path = twin / DIT_FILE
    state = load_tensors(path)
    edit(state)
    save_tensors(state, path)


def _run_text(twin) -> list[str]:
    return ["run", "pooling-nmi", "--model", twin]


def test_an_integer_tensor_in_the_dit_file_names_the_files_key(fails, twin, workdir):
    _edit_dit(twin, lambda s: s.update({KEY: s[KEY].to(torch.int32)}))
    err = fails(_run_text(twin))
    assert f"{twin / DIT_FILE}: 1 tensor(s) not stored as float16, bfloat16, float32 or float64: {KEY} (I32)" in err
    assert tree(workdir) == set()


def test_a_nan_weight_is_refused_naming_the_key(fails, twin, workdir):
    def poison(state):
        state[KEY][3, 1] = float("nan")

    _edit_dit(twin, poison)
    assert fails(_run_text(twin)).endswith(f"{twin / DIT_FILE}: tensor '{KEY}' holds NaN or inf values")
    assert tree(workdir) == set()


def test_an_inf_weight_is_refused_even_where_a_sum_would_cancel(tmp_path):
    from anima_probe.model.files import ModelFileError

    path = save_tensors({"w": torch.tensor([float("inf"), float("-inf"), 1.0])}, tmp_path / "w.safetensors")
    with pytest.raises(ModelFileError, match="tensor 'w' holds NaN or inf"):
        load_tensors(path, weights=True)


def test_a_float64_dit_loads_with_a_warning(twin):
    from anima_probe.model.anima import load_anima

    _edit_dit(twin, lambda s: s.update({k: v.double() for k, v in s.items()}))
    with pytest.warns(UserWarning, match="stored in float64"):
        anima = load_anima(twin, with_vae=False)
    assert anima.dtype == torch.float32


def test_one_stray_key_is_one_unexpected_key_not_a_thousand_missing(fails, twin):
    _edit_dit(twin, lambda s: s.update({"net.blocks.99.foo.weight": torch.zeros(2)}))
    err = fails(_run_text(twin))
    assert "0 missing; 1 unexpected: net.blocks.99.foo.weight; 0 mis-shaped" in err


def test_a_text_encoder_from_another_model_is_named_before_any_forward(fails, twin, workdir):
    import json

    vocab = len(json.loads((twin / "qwen25_tokenizer" / "vocab.json").read_text()))
    other = tiny_qwen3(vocab + 2, seed=1, dims={**TINY_QWEN, "hidden_size": 24, "num_attention_heads": 2})
    write_qwen3_file(twin / TEXT_ENCODER_FILE, other)
    err = fails(_run_text(twin))
    assert err.endswith(f"{twin / TEXT_ENCODER_FILE}: the text encoder's width is 24, but the LLM adapter in "
                        f"{twin / DIT_FILE} reads 48: the two files are from different models")
    assert tree(workdir) == set()


def test_a_vae_with_other_latent_channels_is_named(fails, twin, workdir):
    vae = next((twin / "vae").glob("*.safetensors"))
    write_tiny_vae(vae, dims={**TINY_VAE, "z_dim": 8})
    err = fails(["demo", "--model", twin])
    assert err.endswith(f"{vae}: the VAE's latents have 8 channels, but the DiT in {twin / DIT_FILE} samples 16: "
                        "the two files are from different models")
    assert tree(workdir) == set()


def test_demo_on_a_latent_model_without_a_vae(fails, twin, workdir):
    for f in (twin / "vae").iterdir():
        f.unlink()
    (twin / "vae").rmdir()
    err = fails(["demo", "--model", twin])
    assert err.startswith("anima-probe demo: error: demo draws images, but the DiT in ")
    assert "samples 16-channel latents and no VAE was found" in err and tree(workdir) == set()
