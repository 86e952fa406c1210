"""Known answers for the modulation sources, their file formats, block schedules, Eq. 3 and CFG-row policies."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from anima_probe.guidance.eq3 import CFGRowPolicy, guided_vector, row_vectors, uncond_base_prompt
from anima_probe.guidance.families import guidance_delta
from anima_probe.guidance.schedules import PROFILES, block_weights, from_anzhc, from_sorryhyun, profile
from anima_probe.guidance.sources import (
    CosmosPooledAdapter,
    PooledTextProjection,
    load_cosmos_pooled_adapter,
    load_pooled_text_proj,
    save_cosmos_pooled_adapter,
    save_pooled_text_proj,
)
from anima_probe.model.files import ModelFileError

D, TEXT, CLIP, N = 16, 12, 10, 6  # a toy model: D channels, 6 blocks


def trained_proj(film: bool = False, seed: int = 0) -> PooledTextProjection:
    """A projection with every weight non-zero (as if trained), so the file tests see real values."""
    torch.manual_seed(seed)
    m = PooledTextProjection(D, TEXT, sigma_film=film)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


def trained_adapter(seed: int = 0) -> CosmosPooledAdapter:
    torch.manual_seed(seed)
    m = CosmosPooledAdapter(D, N, CLIP)
    with torch.no_grad():
        m.scales.normal_()
    return m


# ------------------------------------------------------------------------------- (a) pooled_text_proj
def test_state_dict_keys_are_the_community_format():
    assert list(PooledTextProjection(D, TEXT).state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    film = PooledTextProjection(D, TEXT, sigma_film=True).state_dict()
    assert {k: tuple(v.shape) for k, v in film.items()} == {
        "0.weight": (D, TEXT), "0.bias": (D,), "2.weight": (D, D), "2.bias": (D,),
        "sigma_film.weight": (2 * D, D), "sigma_film.bias": (2 * D,)}


def test_anima_sized_head_has_the_documented_parameter_counts():
    with torch.device("meta"):
        plain, film = PooledTextProjection(2048), PooledTextProjection(2048, sigma_film=True)
    assert sum(p.numel() for p in plain.parameters()) == 6_295_552
    assert sum(p.numel() for p in film.parameters()) == 14_688_256  # "14.7 M" with sigma-FiLM (docs)


def test_zero_init_projection_returns_zeros_with_and_without_film():
    pooled, t_emb = torch.randn(3, TEXT), torch.randn(3, D)
    assert torch.equal(PooledTextProjection(D, TEXT)(pooled), torch.zeros(3, D))
    assert torch.equal(PooledTextProjection(D, TEXT, sigma_film=True)(pooled, t_emb), torch.zeros(3, D))


def test_zero_init_film_is_identity_and_film_math_is_pre_silu():
    m = trained_proj(film=True)
    pooled, t_emb = torch.randn(2, TEXT), torch.randn(2, D)
    with torch.no_grad():
        m.sigma_film.weight.zero_(), m.sigma_film.bias.zero_()
        flat = m(pooled, sigma_flat=True)
        torch.testing.assert_close(m(pooled, t_emb), flat)
        m.sigma_film.bias.copy_(torch.cat([torch.full((D,), 1.0), torch.full((D,), 0.5)]))  # scale 1, shift .5
        h = m.linear_in(pooled) * 2 + 0.5
        torch.testing.assert_close(m(pooled, t_emb), m.linear_out(torch.nn.functional.silu(h)))


def test_armed_film_without_t_emb_is_an_error():
    with pytest.raises(ValueError, match="sigma_film"):
        trained_proj(film=True)(torch.randn(1, TEXT))


def test_wrong_pooled_width_is_an_error():
    with pytest.raises(ValueError, match=f"\\(B, {TEXT}\\)"):
        PooledTextProjection(D, TEXT)(torch.randn(1, TEXT + 1))


@pytest.mark.parametrize("film", [False, True])
def test_pooled_text_proj_round_trip_is_bit_exact_bf16(tmp_path, film):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_pooled_text_proj(trained_proj(film), a)
    loaded = load_pooled_text_proj(a, model_channels=D)
    assert (loaded.sigma_film is not None) == film and loaded.linear_in.weight.dtype == torch.float32
    save_pooled_text_proj(loaded, b)
    ta, tb = load_file(str(a)), load_file(str(b))
    assert list(ta) == list(tb) and all(v.dtype == torch.bfloat16 for v in ta.values())
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    with safe_open(str(a), "pt") as f:
        meta = f.metadata()
    assert meta["anima_probe.format"] == "pooled_text_proj" and meta["sigma_film"] == str(film).lower()


def test_community_file_without_metadata_loads(tmp_path):
    path = tmp_path / "pooled_text_proj-0611.safetensors"
    sd = {k: v.to(torch.bfloat16) for k, v in trained_proj().state_dict().items()}
    save_file(sd, str(path))
    loaded = load_pooled_text_proj(path)
    assert torch.equal(loaded.linear_out.bias, sd["2.bias"].float())


def _write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("2.bias"), "1 missing: 2.bias"),
    (lambda sd: sd.update({"3.weight": torch.zeros(2)}), "1 unexpected: 3.weight"),
    (lambda sd: sd.update({"2.weight": torch.zeros(D, D + 1)}), "1 mis-shaped: 2.weight"),
    (lambda sd: sd.update({"sigma_film.weight": torch.zeros(2 * D, D)}), "1 missing: sigma_film.bias"),
    (lambda sd: sd.update({"0.bias": torch.full((D,), float("nan"))}), "key '0.bias' holds non-finite"),
    (lambda sd: sd.pop("0.weight"), "'0.weight'"),
])
def test_bad_pooled_text_proj_files_name_the_file_and_key(tmp_path, mutate, message):
    sd = dict(trained_proj().state_dict())
    mutate(sd)
    path = _write(tmp_path / "bad.safetensors", sd)
    with pytest.raises(ModelFileError, match=message) as err:
        load_pooled_text_proj(path)
    assert "bad.safetensors" in str(err.value)


def test_model_channels_mismatch_names_0_weight(tmp_path):
    path = save_pooled_text_proj(trained_proj(), tmp_path / "p.safetensors")
    with pytest.raises(ModelFileError, match="'0.weight' has D=16 rows .* model_channels=2048"):
        load_pooled_text_proj(path, model_channels=2048)


def test_pooled_text_proj_rejects_other_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_pooled_text_proj(tmp_path / "nope.safetensors")
    pt = tmp_path / "head.pt"
    torch.save(trained_proj().state_dict(), pt)
    with pytest.raises(ModelFileError, match="head.pt.*safetensors"):
        load_pooled_text_proj(pt)
    tagged = _write(tmp_path / "t.safetensors", trained_adapter().state_dict(),
                    {"anima_probe.format": "cosmos_pooled_adapter"})
    with pytest.raises(ModelFileError, match="format 'cosmos_pooled_adapter'"):
        load_pooled_text_proj(tagged)


# ------------------------------------------------------------------------------- (b) Cosmos adapter
def test_cosmos_adapter_keys_and_official_parameter_count():
    assert {k: tuple(v.shape) for k, v in CosmosPooledAdapter(D, N, CLIP).state_dict().items()} == {
        "text_embedder_clip.linear_1.weight": (3 * D, CLIP), "text_embedder_clip.linear_1.bias": (3 * D,),
        "text_embedder_clip.linear_2.weight": (3 * D, 3 * D), "text_embedder_clip.linear_2.bias": (3 * D,),
        "scales": (N, 3 * D)}
    with torch.device("meta"):
        full = CosmosPooledAdapter()
    assert sum(p.numel() for p in full.parameters()) == 42_651_648  # 170.6 MB in fp32, the checkpoint's size


def test_cosmos_adapter_is_a_no_op_at_init_and_block_term_is_scales_times_m():
    a = CosmosPooledAdapter(D, N, CLIP)
    m = a.project(torch.randn(2, CLIP))
    assert m.shape == (2, 3 * D) and m.abs().sum() > 0  # P keeps its default (non-zero) init
    assert torch.equal(a.block_term(m, 3), torch.zeros(2, 3 * D))
    with torch.no_grad():
        a.scales[3] = 2.0
    torch.testing.assert_close(a.block_term(m, 3), 2 * m)
    assert torch.equal(a.block_term(m, 2), torch.zeros(2, 3 * D))
    with pytest.raises(IndexError, match="block_index 6"):
        a.block_term(m, N)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_cosmos_adapter_round_trip_is_bit_exact(tmp_path, suffix):
    src = trained_adapter()
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    save_cosmos_pooled_adapter(src, a)
    loaded = load_cosmos_pooled_adapter(a, model_channels=D, num_blocks=N)
    assert (loaded.model_channels, loaded.num_blocks, loaded.clip_dim) == (D, N, CLIP)
    save_cosmos_pooled_adapter(loaded, b)
    for x in (src.state_dict(), load_cosmos_pooled_adapter(b).state_dict()):
        assert all(torch.equal(x[k], loaded.state_dict()[k]) for k in x)


def test_cosmos_pt_with_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"scales": torch.zeros(N, 3 * D), "cfg": CFGRowPolicy.BOTH}, path)  # a non-tensor class
    with pytest.raises(ModelFileError, match="evil.pt: refused to unpickle"):
        load_cosmos_pooled_adapter(path)


def test_cosmos_pt_wrapped_in_state_dict_loads(tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": trained_adapter().state_dict()}, path)
    assert load_cosmos_pooled_adapter(path).num_blocks == N


@pytest.mark.parametrize("mutate, kwargs, message", [
    (lambda sd: sd.pop("text_embedder_clip.linear_2.bias"), {}, "1 missing: text_embedder_clip.linear_2.bias"),
    (lambda sd: sd.update({"scales": torch.zeros(N, 3 * D + 1)}), {}, "1 mis-shaped: scales"),
    (lambda sd: sd.update({"text_embedder_clip.linear_1.weight": torch.zeros(3 * D + 1, CLIP)}), {}, "not 3\\*D"),
    (lambda sd: None, {"num_blocks": 28}, "num_blocks=6 but the model has 28"),
    (lambda sd: None, {"model_channels": 2048}, "model_channels=16 but the model has 2048"),
])
def test_bad_cosmos_adapter_files_name_the_file_and_key(tmp_path, mutate, kwargs, message):
    sd = dict(trained_adapter().state_dict())
    mutate(sd)
    path = tmp_path / "adapter.pt"
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match=message) as err:
        load_cosmos_pooled_adapter(path, **kwargs)
    assert "adapter.pt" in str(err.value)


# ------------------------------------------------------------------------------- (c) block weights
def nonzero(w: torch.Tensor) -> list[int]:
    return torch.nonzero(w).flatten().tolist()


def test_schedules_touch_exactly_the_blocks_they_name():
    assert block_weights(N, 2.0).tolist() == [2.0] * N
    assert nonzero(block_weights(N, 2.0, "step", 2)) == [2, 3, 4, 5]
    assert nonzero(block_weights(N, 2.0, "interval", 1, 3, end_inclusive=True)) == [1, 2, 3]
    assert nonzero(block_weights(N, 2.0, "interval", 1, 3, end_inclusive=False)) == [1, 2]
    assert nonzero(block_weights(N, 2.0, "interval", 1, 1000, end_inclusive=True)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("start, end", [(0, 5), (2, 4), (0, -1), (3, -2)])
def test_inclusive_and_exclusive_differ_by_exactly_the_end_block(start, end):
    inc = block_weights(N, 1.0, "interval", start, end, end_inclusive=True)
    exc = block_weights(N, 1.0, "interval", start, end, end_inclusive=False)
    assert nonzero(inc - exc) == [end % N]


def test_port_constructors_spell_out_their_conventions():
    assert nonzero(from_anzhc(3.0, 0, -1, num_blocks=28)) == list(range(28))  # block 27 steered
    assert nonzero(from_sorryhyun(3.0, 8, 27, num_blocks=28)) == list(range(8, 27))  # block 27 skipped
    assert nonzero(from_sorryhyun(3.0, 14, None, num_blocks=28)) == list(range(14, 28))
    assert from_anzhc(1.5, 2, 4, num_blocks=N).tolist() == [0, 0, 1.5, 1.5, 1.5, 0]


@pytest.mark.parametrize("kwargs, message", [
    ({"schedule": "interval", "start": 1, "end": 3}, "end_inclusive"),
    ({"schedule": "uniform", "start": 2}, "uniform"),
    ({"schedule": "step", "start": 1, "end": 3}, "step"),
    ({"schedule": "step", "start": N}, "start=6"),
    ({"schedule": "interval", "start": 3, "end": 3, "end_inclusive": False}, "touches no block"),
    ({"schedule": "steps"}, "unknown schedule"),
])
def test_ambiguous_or_empty_schedules_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        block_weights(N, 3.0, **kwargs)


def test_profiles_at_reference_depth_match_the_ports():
    assert set(PROFILES) >= {"uniform", "official-cosmos", "anzhc", "sorryhyun"}
    assert torch.equal(profile("anzhc", 28), from_anzhc(3.0, 0, -1, num_blocks=28))
    assert torch.equal(profile("sorryhyun", 28), from_sorryhyun(3.0, 8, 27, num_blocks=28))
    assert torch.equal(profile("official-cosmos", 28), torch.full((28,), 3.0))
    assert torch.equal(profile("uniform", 28, w=1.0), torch.ones(28))


def test_profiles_scale_to_a_six_block_toy_model():
    # block i takes reference block round(i*27/5): 0, 5, 11, 16, 22, 27
    assert profile("sorryhyun", 6).tolist() == [0, 0, 3, 3, 3, 0]  # first and last stay protected
    assert profile("sorryhyun-safe", 6).tolist() == [0, 0, 0, 3, 3, 3]
    assert profile("anzhc", 6, w=2.0).tolist() == [2.0] * 6
    assert profile("sorryhyun", 1).tolist() == [0.0]


def test_unknown_profile_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'sorryhyun'"):
        profile("sorryhyn", 28)


# ------------------------------------------------------------------------------- (d) Eq. 3 and CFG rows
def test_guided_vector_known_answer():
    base, pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    assert guided_vector(base, pos, neg, 3.0).tolist() == [7.0, -3.0]
    assert torch.equal(guided_vector(base, pos, neg, 0.0), base)


def test_guidance_delta_applies_each_family_projection():
    proj = trained_proj()
    p, n = torch.randn(1, TEXT), torch.randn(1, TEXT)
    torch.testing.assert_close(guidance_delta(proj, p, n), proj(p) - proj(n))
    assert torch.equal(guidance_delta(proj, p, p), torch.zeros(1, D))
    adapter = trained_adapter()
    cp, cn = torch.randn(1, CLIP), torch.randn(1, CLIP)
    delta = guidance_delta(adapter, cp, cn)
    assert delta.shape == (1, 3 * D)
    torch.testing.assert_close(delta, adapter.project(cp) - adapter.project(cn))
    assert torch.equal(guidance_delta(PooledTextProjection(D, TEXT), p, n), torch.zeros(1, D))  # zero-init


def test_row_vector_policies_known_answers():
    bc, bu, delta = torch.tensor([1.0]), torch.tensor([10.0]), torch.tensor([0.5])
    assert [v.item() for v in row_vectors("both", bc, bu, delta, 2.0)] == [2.0, 2.0]
    assert [v.item() for v in row_vectors("cond-only", bc, bu, delta, 2.0)] == [2.0, 10.0]
    assert [v.item() for v in row_vectors(CFGRowPolicy.OFFICIAL, bc, bu, delta, 2.0)] == [2.0, 10.0]
    assert [v.item() for v in row_vectors("per-row-base", bc, bu, delta, 2.0)] == [2.0, 11.0]
    assert [v.item() for v in row_vectors("both", bc, None, delta, 0.0)] == [1.0, 1.0]


def test_row_policies_change_what_cfg_does_to_the_delta():
    # with a model linear in the vector, CFG output = u + s(c - u): the delta survives x s or x 1
    bc, bu, delta, s = torch.zeros(1), torch.zeros(1), torch.ones(1), 4.0

    def cfg_out(policy):
        c, u = row_vectors(policy, bc, bu, delta, 1.0)
        return (u + s * (c - u)).item()

    assert cfg_out("cond-only") == s and cfg_out("official") == s
    assert cfg_out("both") == 1.0 and cfg_out("per-row-base") == 1.0


def test_uncond_base_prompt_and_bad_policy():
    assert uncond_base_prompt("official", "lowres") == ""
    assert uncond_base_prompt("cond-only", "lowres") == "lowres"
    assert uncond_base_prompt("per-row-base", "lowres") == "lowres"
    assert uncond_base_prompt("both", "lowres") is None
    with pytest.raises(ValueError, match="needs base_uncond"):
        row_vectors("official", torch.zeros(1), None, torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="unknown CFG row policy 'cond'"):
        row_vectors("cond", torch.zeros(1), None, torch.zeros(1), 1.0)
