"""Does `anima_probe.model.anima` (diffusers + corrections) compute Anima's forward, fact by fact?

Each loaded tiny model is compared with `reference_anima`, an independent plain-torch implementation written from the
facts in docs/anima.md, on random weights in the published file format. Tolerance: 1e-4 relative (||a - b|| / ||b||)
in fp32, where the two agree to ~3e-7 (float32 rounding); each fact test also shows that breaking the fact moves the
error far past that tolerance, so the agreement is not an accident of insensitive inputs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from reference_anima import axis_freqs, reference_adapter, reference_velocity, rope_split  # tests/support/

from anima_probe.model.anima import QK_NORM_EPS, Anima, load_dit_file
from anima_probe.model.dit_file import ADAPTER_PREFIX, AdapterConfig, DiTConfig, adapter_layout, dit_layout
from anima_probe.model.tiny import TINY_DIT, random_tensors, write_dit_file

TOL = 1e-4  # fp32; measured agreement ~3e-7
BF16_TOL = 3e-2  # bf16 weights and activations (8-bit mantissa, ~4e-3 per rounding) vs the fp32 reference
BROKEN = 1e-2  # a broken fact must move the error at least this far (100x the tolerance)
SIGMAS = (0.07, 0.83)
LATENT = (16, 24)  # non-square: h and w positions differ
CTX_ROWS = 512
QWEN_DIM, QWEN_LEN, T5_LEN, VOCAB = 48, 7, 5, 100

# Two widths: DiT head 32 (2 heads) and head 64 (2 heads); adapter head 16 and 32.
WIDTHS = {
    "head32": (TINY_DIT, AdapterConfig(QWEN_DIM, TINY_DIT.text_dim, 2, 16, 4 * TINY_DIT.text_dim, VOCAB), "net."),
    "head64": (dataclasses.replace(TINY_DIT, hidden=128, head_dim=64, mlp_hidden=512, text_dim=64),
               AdapterConfig(QWEN_DIM, 64, 2, 32, 256, VOCAB), "model.diffusion_model."),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def make_state(dit: DiTConfig, ad: AdapterConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = random_tensors(dit_layout(dit), g)
    state.update({ADAPTER_PREFIX + k: v for k, v in random_tensors(adapter_layout(ad), g).items()})
    return state


def load(tmp_path, state: dict, prefix: str = "net.", dtype=torch.float32) -> Anima:
    path = write_dit_file(tmp_path / "anima.safetensors", state, prefix)
    return Anima(*load_dit_file(path, dtype=dtype))


@pytest.fixture(scope="module", params=list(WIDTHS))
def pair(request, tmp_path_factory):
    """(loaded Anima, bare state dict) for one width."""
    dit, ad, prefix = WIDTHS[request.param]
    state = make_state(dit, ad)
    return load(tmp_path_factory.mktemp(request.param), state, prefix), state


def inputs(text_dim: int, latent=LATENT, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, *latent, generator=g)  # (B, C, H, W)
    ctx = torch.randn(batch, CTX_ROWS, text_dim, generator=g)  # (B, 512, D_text)
    return x, ctx


def velocity_error(model: Anima, state: dict, x, sigma: float, ctx, **ref_kwargs) -> float:
    s = torch.full((x.shape[0],), sigma)  # (B,)
    with torch.no_grad():
        return rel(model.velocity(x, s, ctx), reference_velocity(state, x, s, ctx, **ref_kwargs))


def adapter_pair(model: Anima, state: dict, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, QWEN_LEN, QWEN_DIM, generator=g)  # (B, Ls, Ds)
    ids = torch.randint(0, VOCAB, (2, T5_LEN), generator=g)  # (B, Lt)
    with torch.no_grad():
        return model.adapter(source_hidden_states=hidden, target_input_ids=ids), reference_adapter(state, hidden, ids)


# ----------------------------------------------------------------------------------------------------------------
# The reference itself, against the numbers in docs/anima.md ("Architecture and dimensions", RoPE)


def test_reference_rope_split_and_theta_match_docs():
    assert rope_split(128) == (44, 42, 42)  # (t, h, w)
    theta_s = 1e4 * 4 ** (42 / 40)
    assert theta_s == pytest.approx(42871, abs=1)
    assert axis_freqs(42, theta_s)[1].item() == pytest.approx(theta_s ** (-2 / 42))


# ----------------------------------------------------------------------------------------------------------------
# Whole-model parity


@pytest.mark.parametrize("sigma", SIGMAS)
def test_velocity_matches_reference(pair, sigma):
    model, state = pair
    x, ctx = inputs(model.dit_config.text_dim)
    assert velocity_error(model, state, x, sigma, ctx) < TOL


def test_adapter_matches_reference_and_pads_with_zeros(pair):
    model, state = pair
    out, ref = adapter_pair(model, state)
    assert out.shape[1] >= CTX_ROWS
    assert rel(out[:, :T5_LEN], ref) < TOL
    assert out[:, T5_LEN:].abs().max().item() == 0.0


@pytest.mark.parametrize("sigma", SIGMAS)
def test_adapter_then_dit_matches_reference(pair, sigma):
    model, state = pair
    ctx, ref_ctx = adapter_pair(model, state)  # (B, >=512, D), (B, Lt, D)
    ref_ctx = F.pad(ref_ctx, (0, 0, 0, CTX_ROWS - T5_LEN))  # (B, 512, D) zero rows after the T5 tokens
    x, _ = inputs(model.dit_config.text_dim)
    s = torch.full((2,), sigma)
    with torch.no_grad():
        v = model.velocity(x, s, ctx[:, :CTX_ROWS])
    assert rel(v, reference_velocity(state, x, s, ref_ctx)) < TOL


# ----------------------------------------------------------------------------------------------------------------
# One fact per test, each with the broken variant shown to be visible


def test_timestep_is_sigma_not_sigma_times_1000(pair):
    model, state = pair
    x, ctx = inputs(model.dit_config.text_dim)
    s = torch.full((2,), 0.5)
    with torch.no_grad():
        v = model.velocity(x, s, ctx)
        assert rel(v, reference_velocity(state, x, s, ctx)) < TOL
        assert rel(v, reference_velocity(state, x, 1000 * s, ctx)) > 0.1  # ~100% in practice


def test_qk_norm_eps_is_1e6_on_every_block(pair):
    model, _ = pair
    for i, block in enumerate(model.transformer.transformer_blocks):
        for name in ("attn1", "attn2"):
            attn = getattr(block, name)
            assert (attn.norm_q.eps, attn.norm_k.eps) == (1e-6, 1e-6), f"block {i} {name}"
    assert QK_NORM_EPS == 1e-6


def test_qk_norm_eps_is_visible_when_per_head_magnitudes_are_small(tmp_path):
    """Per-head q/k of mean square ~1e-6 (q/k projections scaled by 1e-3) make eps 1e-5 vs 1e-6 a large change.

    Scaling the q/k *norm gains* would not do it: eps acts on the norm's input, so the projections are scaled.
    """
    dit, ad, _ = WIDTHS["head32"]
    state = make_state(dit, ad)
    for k in state:
        if k.startswith("blocks.") and k.endswith(("q_proj.weight", "k_proj.weight")):
            state[k] = state[k] * 1e-3
    model = load(tmp_path, state)
    x, ctx = inputs(dit.text_dim)
    assert velocity_error(model, state, x, 0.5, ctx) < TOL
    for block in model.transformer.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = attn.norm_k.eps = 1e-5  # diffusers' default, the deviation the loader corrects
    assert velocity_error(model, state, x, 0.5, ctx) > BROKEN


@pytest.fixture(scope="module", params=list(WIDTHS))
def sharp_pair(request, tmp_path_factory):
    """Like `pair`, with self-attention q/k norm gains x3: sharper, position-dependent attention.

    With plain random weights self-attention is nearly uniform, so the RoPE frequencies move the velocity by only
    ~1e-2; sharper logits make a wrong frequency table a ~1e-1 change.
    """
    dit, ad, prefix = WIDTHS[request.param]
    state = make_state(dit, ad)
    for k in state:
        if k.startswith("blocks.") and k.endswith(("self_attn.q_norm.weight", "self_attn.k_norm.weight")):
            state[k] = 3.0 * state[k]
    return load(tmp_path_factory.mktemp(f"sharp_{request.param}"), state, prefix), state


@pytest.mark.parametrize("latent", [(16, 16), (16, 24), (24, 16)])
def test_rope_extrapolation_is_4_on_h_and_w(sharp_pair, latent):
    """Square and both non-square orientations: h and w positions must land on the h and w frequency pairs."""
    model, state = sharp_pair
    x, ctx = inputs(model.dit_config.text_dim, latent=latent, batch=1)
    assert velocity_error(model, state, x, 0.5, ctx) < TOL
    assert velocity_error(model, state, x, 0.5, ctx, extrapolation=1.0) > BROKEN  # plain theta 10000 on h/w


def test_zero_padded_context_is_attended_without_a_mask(pair):
    """Zero rows are keys with logit 0 (attention sinks): trimming them, as a mask would, changes the output."""
    model, state = pair
    x, _ = inputs(model.dit_config.text_dim)
    real = torch.randn(2, T5_LEN, model.dit_config.text_dim, generator=torch.Generator().manual_seed(3))
    padded = F.pad(real, (0, 0, 0, CTX_ROWS - T5_LEN))  # (B, 512, D)
    s = torch.full((2,), 0.5)
    with torch.no_grad():
        v = model.velocity(x, s, padded)
        assert rel(v, reference_velocity(state, x, s, padded)) < TOL
        assert rel(v, reference_velocity(state, x, s, real)) > BROKEN


def test_latent_side_over_256_patches_runs_and_matches(tmp_path):
    """RoPE table: 2x600 latent = 300 patches along w, past diffusers' default 128-per-axis table."""
    dit = dataclasses.replace(TINY_DIT, num_blocks=1)
    ad = AdapterConfig(QWEN_DIM, dit.text_dim, 1, 16, 4 * dit.text_dim, VOCAB)
    state = make_state(dit, ad)
    model = load(tmp_path, state)
    x, ctx = inputs(dit.text_dim, latent=(2, 600), batch=1)  # (1, 16, 2, 600): 1 x 300 patches
    assert velocity_error(model, state, x, 0.5, ctx[:, :64]) < TOL  # 64 context rows keep it cheap


# ----------------------------------------------------------------------------------------------------------------
# bf16 smoke


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    dit, ad, prefix = WIDTHS["head32"]
    state = make_state(dit, ad)
    return load(tmp_path_factory.mktemp("bf16"), state, prefix, dtype=torch.bfloat16), state


@pytest.mark.parametrize("sigma", SIGMAS)
def test_bf16_velocity_is_close_to_fp32_reference(bf16_pair, sigma):
    model, state = bf16_pair
    x, ctx = inputs(model.dit_config.text_dim)
    err = velocity_error(model, state, x, sigma, ctx)  # measured ~1e-2
    assert math.isfinite(err) and err < BF16_TOL


def test_bf16_adapter_is_close_to_fp32_reference(bf16_pair):
    model, state = bf16_pair
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, QWEN_LEN, QWEN_DIM, generator=g)  # (B, Ls, Ds)
    ids = torch.randint(0, VOCAB, (2, T5_LEN), generator=g)  # (B, Lt)
    with torch.no_grad():
        out = model.adapter(source_hidden_states=hidden.bfloat16(), target_input_ids=ids)  # (B, >=512, D) bf16
    assert out.dtype == torch.bfloat16
    assert rel(out[:, :T5_LEN], reference_adapter(state, hidden, ids)) < BF16_TOL  # measured ~8e-3
