"""Qwen-Image VAE: key naming, strict single-file loading, latent normalisation, tiny twins."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from anima_probe.model import vae as V
from anima_probe.model.files import ModelFileError
from anima_probe.model.tiny import tiny_vae_state_dict, write_tiny_vae
from anima_probe.pipeline.provenance import REPO_ROOT

DOC = REPO_ROOT / "docs" / "anima.md"  # its "VAE and latent normalisation" table: channel | mean | std
REAL_CONFIG = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
               "temperal_downsample": [False, True, True], "input_channels": 3}  # fmt: skip
TINY_CONFIG = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
               "temperal_downsample": [False, True, True], "input_channels": 3}  # fmt: skip


def meta_state_dict(**config) -> dict[str, torch.Tensor]:
    """Shapes of a full-size model without allocating its 127M parameters."""
    with torch.device("meta"):
        return AutoencoderKLQwenImage(**config).state_dict()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    return write_tiny_vae(tmp_path_factory.mktemp("vae") / "qwen_image_vae.safetensors", seed=0)


def rewrite(src: Path, dst: Path, edit) -> Path:
    state = load_file(str(src))
    edit(state)
    save_file(state, str(dst))
    return dst


# --- constants ---------------------------------------------------------------------------------------------
def doc_latent_table() -> tuple[list[float], list[float]]:
    """(mean, std) per channel from the table in docs/anima.md, section "VAE and latent normalisation"."""
    section = DOC.read_text(encoding="utf-8").split("## VAE and latent normalisation", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (-?\d+\.\d+) \| (\d+\.\d+) \|$", section, re.M)
    assert [int(c) for c, _, _ in rows] == list(range(16)), f"{DOC}: expected channels 0..15 in the table"
    return [float(m) for _, m, _ in rows], [float(s) for _, _, s in rows]


def test_latent_constants_match_the_docs_table():
    mean, std = doc_latent_table()
    assert list(V.LATENT_MEAN) == mean and list(V.LATENT_STD) == std


def test_latent_constants_match_diffusers_defaults():
    defaults = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
    assert list(V.LATENT_MEAN) == defaults["latents_mean"].default
    assert list(V.LATENT_STD) == defaults["latents_std"].default


# --- key naming --------------------------------------------------------------------------------------------
def test_published_config_wan_names_match_known_names_and_diffusers_converter():
    keys = set(meta_state_dict())
    wan = {V.diffusers_to_wan_key(k, 2): k for k in keys}
    assert len(wan) == len(keys) == 194  # the inverse is injective
    for known in (
        "encoder.conv1.weight",
        "encoder.middle.0.residual.0.gamma",
        "encoder.middle.1.to_qkv.weight",
        "conv1.weight",
        "conv2.bias",
        "decoder.head.2.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.7.time_conv.weight",
        "encoder.downsamples.5.time_conv.weight",
        "encoder.downsamples.3.shortcut.weight",
    ):
        assert known in wan, known
    # forward(inverse) is the identity, and agrees with diffusers' own converter on this config
    assert {V.wan_to_diffusers_key(w, 2): d for w, d in wan.items()} == {d: d for d in keys}
    # values carry the Wan name through diffusers' converter, so each pairing is checked, not just the key set
    assert convert_wan_vae_to_diffusers({w: w for w in wan}) == {d: w for w, d in wan.items()}


@pytest.mark.parametrize(
    "config",
    [
        TINY_CONFIG,
        {"base_dim": 8, "num_res_blocks": 3, "dim_mult": [1, 2, 2]},
        {"base_dim": 4, "num_res_blocks": 2, "dim_mult": [1, 2, 2, 2]},
    ],
)
def test_forward_of_inverse_is_identity_for_other_configs(config):
    config = {k: v for k, v in config.items() if k != "input_channels"}
    if len(config["dim_mult"]) == 3:
        config["temperal_downsample"] = [False, True]
    keys = set(meta_state_dict(**config))
    res = config["num_res_blocks"]
    wan = {V.diffusers_to_wan_key(k, res) for k in keys}
    assert len(wan) == len(keys)
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in wan)
    assert {V.wan_to_diffusers_key(k, res) for k in wan} == keys


# --- config inference --------------------------------------------------------------------------------------
def test_infer_vae_config_recovers_published_config_from_shapes_in_both_namings():
    state = meta_state_dict()
    assert V.infer_vae_config(state) == REAL_CONFIG
    assert V.infer_vae_config({V.diffusers_to_wan_key(k, 2): t for k, t in state.items()}) == REAL_CONFIG


def test_infer_vae_config_recovers_tiny_config_from_file(tiny_file):
    assert V.infer_vae_config(load_file(str(tiny_file))) == TINY_CONFIG


# --- loading the tiny twin ---------------------------------------------------------------------------------
def test_round_trip_write_load_gives_same_tensors(tiny_file):
    model = V.load_vae(tiny_file)
    expected = tiny_vae_state_dict(seed=0)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert dict(model.config)["num_res_blocks"] == 1


def test_load_casts_to_requested_dtype(tiny_file):
    model = V.load_vae(tiny_file, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    gamma = tiny_vae_state_dict(seed=0)["decoder.norm_out.gamma"]
    assert torch.equal(model.decoder.norm_out.gamma, gamma.bfloat16())


def test_diffusers_folder_loads_same_tensors(tmp_path, tiny_file):
    with torch.device("meta"):
        model = AutoencoderKLQwenImage(**TINY_CONFIG)
    model.load_state_dict(tiny_vae_state_dict(seed=0), assign=True)
    model.save_pretrained(tmp_path / "pipe" / "vae")
    for where in (tmp_path / "pipe" / "vae", tmp_path / "pipe"):
        loaded = V.load_vae(where).state_dict()
        for name, tensor in V.load_vae(tiny_file).state_dict().items():
            assert torch.equal(loaded[name], tensor), name


# --- strict load errors ------------------------------------------------------------------------------------
def test_missing_key_is_named_in_file_naming_with_counts(tmp_path, tiny_file):
    bad = rewrite(
        tiny_file, tmp_path / "qwen_image_vae.safetensors", lambda s: s.pop("decoder.head.2.weight")
    )
    with pytest.raises(ModelFileError) as err:
        V.load_vae(bad)
    msg = str(err.value)
    assert "qwen_image_vae.safetensors (wan-single-file): keys do not match the layout; 1 missing: decoder.head.2.weight" in msg
    assert "0 unexpected" in msg and "0 mis-shaped" in msg
    assert isinstance(err.value, ValueError)


def test_extra_key_is_reported_as_unexpected(tmp_path, tiny_file):
    def add(state):
        state["decoder.head.3.weight"] = torch.zeros(2)

    with pytest.raises(
        ValueError, match=r"0 missing; 1 unexpected: decoder\.head\.3\.weight; 0 mis-shaped"
    ):
        V.load_vae(rewrite(tiny_file, tmp_path / "extra.safetensors", add))


def test_wrong_shape_is_reported_with_both_shapes(tmp_path, tiny_file):
    def widen(state):
        state["decoder.head.2.bias"] = torch.zeros(4)

    with pytest.raises(
        ModelFileError, match=r"1 mis-shaped: decoder\.head\.2\.bias \[4\] \(expected \[3\]\)"
    ):
        V.load_vae(rewrite(tiny_file, tmp_path / "shape.safetensors", widen))


def test_truncated_file_gives_one_clear_error(tmp_path, tiny_file):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.safetensors: truncated safetensors file"):
        V.load_vae(bad)


def test_text_file_renamed_safetensors_gives_one_clear_error(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("these are not tensors\n" * 20)
    with pytest.raises(ModelFileError, match=r"notes\.safetensors: not a safetensors file"):
        V.load_vae(bad)


def test_folder_without_weights_names_the_missing_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        ModelFileError, match=r"diffusers-folder.*diffusion_pytorch_model\.safetensors is missing"
    ):
        V.load_vae(tmp_path)


# --- pixels <-> latents ------------------------------------------------------------------------------------
def test_normalisation_round_trip_and_known_answers():
    z = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    assert torch.allclose(V.denormalise(V.normalise(z)), z, rtol=0, atol=1e-12)
    mean = torch.tensor(V.LATENT_MEAN).view(1, 16, 1, 1)
    std = torch.tensor(V.LATENT_STD).view(1, 16, 1, 1)
    assert torch.allclose(V.normalise(mean + std), torch.ones(1, 16, 1, 1), atol=1e-6)
    assert torch.allclose(V.denormalise(torch.zeros(1, 16, 2, 2)), mean.expand(1, 16, 2, 2), atol=0)
    with pytest.raises(ValueError, match="16 channels"):
        V.normalise(torch.zeros(1, 4, 2, 2))


def test_encode_is_normalised_posterior_mode_with_image_shapes(tiny_file):
    model = V.load_vae(tiny_file)
    pixels = torch.rand(2, 3, 32, 48) * 2 - 1
    latents = V.encode(model, pixels)
    assert latents.shape == (2, 16, 4, 6) and latents.dtype == torch.float32
    raw = model.encode(pixels.unsqueeze(2)).latent_dist.mean.squeeze(2)  # (2, 16, 4, 6)
    assert torch.allclose(latents, V.normalise(raw), atol=1e-6)
    assert torch.equal(V.encode(model, pixels), latents)  # the mode, not a sample


def test_decode_denormalises_and_returns_images_in_range(tiny_file):
    model = V.load_vae(tiny_file)
    latents = torch.randn(1, 16, 3, 4)
    pixels = V.decode(model, latents)
    assert pixels.shape == (1, 3, 24, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    raw = model.decode(V.denormalise(latents).unsqueeze(2)).sample.squeeze(2)  # (1, 3, 24, 32)
    assert torch.allclose(pixels, raw, atol=1e-6)


def test_encode_rejects_bad_pixels(tiny_file):
    model = V.load_vae(tiny_file)
    with pytest.raises(ValueError, match="multiples of 8"):
        V.encode(model, torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        V.encode(model, torch.full((1, 3, 8, 8), 255.0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        V.encode(model, torch.zeros(1, 3, 1, 8, 8))
