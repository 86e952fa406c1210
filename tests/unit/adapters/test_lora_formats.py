"""LoRA files in the three formats users have: names, round trips, conversions and strict errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from anima_probe.adapters.lora import (
    FORMATS,
    PEFT_METADATA_KEY,
    LoraWeights,
    parse_lora,
    read_lora,
    save_lora,
)
from anima_probe.adapters.names import (
    LoraKeyError,
    default_targets,
    kohya_modules,
    linear_modules,
    linear_shapes,
)
from anima_probe.model.tiny import TINY_DIT

C = TINY_DIT


def _random_lora(rank: int = 4, alpha: float = 2.0, seed: int = 0, modules=None) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    w = LoraWeights({}, {}, {}, {"note": "test"})
    for m in modules or default_targets(C):
        out_f, in_f = linear_shapes(C)[m]
        w.down[m], w.up[m], w.alpha[m] = torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g), alpha
    return w


def test_module_names_follow_diffusers_converter():
    names = linear_modules(C)
    assert names["blocks.0.self_attn.q_proj"] == "transformer_blocks.0.attn1.to_q"
    assert names["blocks.1.cross_attn.output_proj"] == "transformer_blocks.1.attn2.to_out.0"
    assert names["blocks.0.mlp.layer1"] == "transformer_blocks.0.ff.net.0.proj"
    assert names["blocks.0.mlp.layer2"] == "transformer_blocks.0.ff.net.2"
    assert linear_shapes(C)["blocks.0.cross_attn.k_proj"] == (C.hidden, C.text_dim)
    assert len(default_targets(C)) == 10 * C.num_blocks  # Anima: 280 Linears at 28 blocks
    flat = kohya_modules(C)
    assert flat["blocks_0_self_attn_output_proj"] == "blocks.0.self_attn.output_proj"  # looked up, not un-flattened
    assert len(flat) == len(names)  # flattening is unambiguous on this DiT


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_tensors_and_alpha(tmp_path, fmt):
    w = _random_lora(alpha=3.0)
    back = read_lora(save_lora(w, tmp_path / f"{fmt}.safetensors", fmt, C), C)
    assert back.down.keys() == w.down.keys()
    assert all(torch.equal(back.down[m], w.down[m]) and torch.equal(back.up[m], w.up[m]) for m in w.down)
    assert back.alpha == w.alpha and back.metadata["note"] == "test"


def test_keys_are_the_published_ones(tmp_path):
    w = _random_lora(modules=["blocks.0.self_attn.q_proj"])
    kohya = load_file(save_lora(w, tmp_path / "k.safetensors", "kohya", C))
    assert set(kohya) == {"lora_unet_blocks_0_self_attn_q_proj." + s for s in ("lora_down.weight", "lora_up.weight",
                                                                              "alpha")}
    comfy = load_file(save_lora(w, tmp_path / "c.safetensors", "comfyui", C))
    assert set(comfy) == {"diffusion_model.blocks.0.self_attn.q_proj." + s for s in ("lora_A.weight", "lora_B.weight",
                                                                                     "alpha")}
    peft = load_file(save_lora(w, tmp_path / "p.safetensors", "peft", C))
    assert set(peft) == {"transformer.transformer_blocks.0.attn1.to_q." + s for s in ("lora_A.weight", "lora_B.weight")}


def test_per_module_ranks_and_alphas_survive_peft_metadata(tmp_path):
    w = _random_lora(rank=4, alpha=2.0)
    w.down["blocks.1.mlp.layer2"] = w.down["blocks.1.mlp.layer2"][:2]
    w.up["blocks.1.mlp.layer2"] = w.up["blocks.1.mlp.layer2"][:, :2]
    w.alpha["blocks.0.self_attn.q_proj"] = 7.0
    path = save_lora(w, tmp_path / "p.safetensors", "peft", C)
    back = read_lora(path, C)
    assert back.alpha == w.alpha and back.rank("blocks.1.mlp.layer2") == 2


def test_missing_alpha_means_rank_in_every_format():
    w = _random_lora(rank=4, modules=["blocks.0.mlp.layer1"])
    down, up = w.down["blocks.0.mlp.layer1"], w.up["blocks.0.mlp.layer1"]
    for state in ({"lora_unet_blocks_0_mlp_layer1.lora_down.weight": down, "lora_unet_blocks_0_mlp_layer1.lora_up.weight": up},
                  {"diffusion_model.blocks.0.mlp.layer1.lora_A.weight": down,
                   "diffusion_model.blocks.0.mlp.layer1.lora_B.weight": up},
                  {"transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight": down,
                   "transformer.transformer_blocks.0.ff.net.0.proj.lora_B.weight": up}):
        parsed = parse_lora(state, C)
        assert parsed.alpha == {"blocks.0.mlp.layer1": 4.0} and parsed.scale("blocks.0.mlp.layer1") == 1.0


def test_alpha_scales_the_update():
    w = _random_lora(rank=4, alpha=2.0, modules=["blocks.0.mlp.layer1"])
    m = "blocks.0.mlp.layer1"
    assert torch.allclose(w.delta(m), 0.5 * w.up[m] @ w.down[m])


def test_kohya_and_peft_files_mean_the_same_update(tmp_path):
    w = _random_lora(alpha=3.0)
    k = read_lora(save_lora(w, tmp_path / "k.safetensors", "kohya", C), C)
    p = read_lora(save_lora(k, tmp_path / "p.safetensors", "peft", C), C)
    assert all(torch.equal(k.delta(m), p.delta(m)) for m in w.down)


def test_unknown_key_names_the_file_key_and_closest_modules(tmp_path):
    path = tmp_path / "bad.safetensors"
    w = _random_lora(modules=["blocks.0.self_attn.q_proj"])
    state = {k.replace("q_proj", "q_prj"): v for k, v in load_file(save_lora(w, path, "kohya", C)).items()}
    save_file(state, str(path))
    with pytest.raises(LoraKeyError) as err:
        read_lora(path, C)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "lora_unet_blocks_0_self_attn_q_prj" in line
    assert "closest: lora_unet_blocks_0_self_attn_q_proj" in line


def test_block_beyond_the_dit_and_mixed_formats_are_refused():
    w = _random_lora(modules=["blocks.0.self_attn.q_proj"])
    down, up = w.down["blocks.0.self_attn.q_proj"], w.up["blocks.0.self_attn.q_proj"]
    with pytest.raises(LoraKeyError, match="blocks.7.self_attn.q_proj.*closest"):
        parse_lora({"diffusion_model.blocks.7.self_attn.q_proj.lora_A.weight": down,
                    "diffusion_model.blocks.7.self_attn.q_proj.lora_B.weight": up}, C)
    with pytest.raises(LoraKeyError, match="mixes formats"):
        parse_lora({"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": down,
                    "diffusion_model.blocks.0.self_attn.q_proj.lora_B.weight": up}, C)
    with pytest.raises(LoraKeyError, match="no LoRA format"):
        parse_lora({"blocks.0.self_attn.q_proj.weight": down}, C)


def test_wrong_shapes_and_half_pairs_are_refused():
    m = "blocks.0.cross_attn.k_proj"  # in = text_dim, out = hidden
    out_f, in_f = linear_shapes(C)[m]
    key = "lora_unet_blocks_0_cross_attn_k_proj"
    ok_down, ok_up = torch.zeros(4, in_f), torch.zeros(out_f, 4)
    with pytest.raises(LoraKeyError, match=rf"down weight has shape \(4, {out_f}\).*\(rank, {in_f}\)"):
        parse_lora({f"{key}.lora_down.weight": torch.zeros(4, out_f), f"{key}.lora_up.weight": ok_up}, C)
    with pytest.raises(LoraKeyError, match=rf"up weight has shape \({out_f}, 3\); expected \({out_f}, 4\)"):
        parse_lora({f"{key}.lora_down.weight": ok_down, f"{key}.lora_up.weight": torch.zeros(out_f, 3)}, C)
    with pytest.raises(LoraKeyError, match="no up weight"):
        parse_lora({f"{key}.lora_down.weight": ok_down, f"{key}.alpha": torch.tensor(4.0)}, C)


def test_peft_metadata_is_diffusers_shape(tmp_path):
    w = _random_lora(rank=4, alpha=2.0, modules=["blocks.0.self_attn.q_proj"])
    with safe_open(str(save_lora(w, tmp_path / "p.safetensors", "peft", C)), framework="pt") as f:
        meta = json.loads(f.metadata()[PEFT_METADATA_KEY])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 2.0
    assert meta["transformer.target_modules"] == ["transformer_blocks.0.attn1.to_q"]


def test_the_released_dit_has_280_default_targets_named_as_in_its_key_list():
    """Known answer from the published key list: every 2-D DiT weight is a Linear a LoRA may target."""
    from pathlib import Path

    from anima_probe.model.dit_file import ANIMA_DIT

    tsv = Path(__file__).parents[2] / "support" / "anima_checkpoint_keys.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if line and not line.startswith("#")]
    published = {k.removesuffix(".weight") for k, shape in rows
                 if not k.startswith("llm_adapter.") and k.endswith(".weight") and shape.count(",") == 1}
    assert set(linear_modules(ANIMA_DIT)) == published
    assert len(default_targets(ANIMA_DIT)) == 280 and set(default_targets(ANIMA_DIT)) <= published
