"""Modulation injection: vectors reach exactly the blocks and rows they name, no-ops are bit-exact, hooks never leak."""

from __future__ import annotations

import contextlib

import pytest
import torch

from anima_probe.guidance.families import COSMOS, POOLED_TEXT_PROJ
from anima_probe.guidance.modulation import Modulation, build, constant, inject
from anima_probe.guidance.schedules import block_weights
from anima_probe.guidance.sources import CosmosPooledAdapter, PooledTextProjection
from anima_probe.model.anima import load_anima


@pytest.fixture(scope="module")
def anima():
    return load_anima(with_vae=False)  # the shipped toy world: 5 blocks, D = 128, text_dim 96, pixels 3x32x32


def _inputs(anima, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g)  # 64 tokens: the model runs at any size, tests stay fast
    ctx = torch.randn(batch, 512, anima.dit_config.text_dim, generator=g)
    return x, torch.linspace(0.3, 0.8, batch), ctx


def _hook_count(anima):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())


@contextlib.contextmanager
def _seen(anima):
    """Record (embedded_timestep, temb) as each block and the final layer receive them (register AFTER inject)."""
    seen, handles = {}, []
    for i, blk in enumerate(anima.transformer.transformer_blocks):
        handles.append(blk.register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(i, (a[2].clone(), a[3].clone()))))
    handles.append(anima.transformer.norm_out.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("final", (a[1].clone(), a[2].clone()))))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _velocity_and_seen(anima, modulation=None, batch=2):
    x, s, ctx = _inputs(anima, batch)
    with torch.no_grad(), inject(anima, modulation) if modulation else contextlib.nullcontext(), _seen(anima) as seen:
        v = anima.velocity(x, s, ctx)
    return v, seen


def _random_proj(d, text_dim, seed=1):
    proj = PooledTextProjection(d, text_dim)
    with torch.no_grad():
        proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)) / d**0.5)
    return proj


def test_zero_initialised_sources_leave_the_velocity_bit_exact(anima):
    d, n, text_dim = anima.dit_config.hidden, anima.num_blocks, anima.dit_config.text_dim
    plain, _ = _velocity_and_seen(anima)
    proj = PooledTextProjection(d, text_dim)  # fresh: output Linear zero-initialised
    pooled = torch.randn(3, text_dim)
    base, delta = proj(pooled[:1]), proj(pooled[1:2]) - proj(pooled[2:])
    mod = build(POOLED_TEXT_PROJ, lambda w: base + w * delta, block_weights(n, 3.0), final_weight=2.0)
    assert torch.equal(_velocity_and_seen(anima, mod)[0], plain)
    adapter = CosmosPooledAdapter(d, n, clip_dim=24)  # fresh: per-block scales zero
    m = adapter.project(torch.randn(1, 24))
    mod = build(COSMOS, lambda w: m + w * m, block_weights(n, 3.0), active=torch.ones(n, dtype=torch.bool),
                scales=adapter.scales, final_weight=None)
    assert torch.equal(_velocity_and_seen(anima, mod)[0], plain)


@pytest.mark.parametrize("weights", [[0, 0, 3, 3, 0], [2, 0, 0, 0, 0], [0, 0, 0, 0, 1.5]])
def test_pooled_text_proj_schedule_touches_exactly_its_blocks_with_the_known_vector(anima, weights):
    d = anima.dit_config.hidden
    delta = torch.randn(d)
    _, before = _velocity_and_seen(anima)
    mod = build(POOLED_TEXT_PROJ, lambda w: w * delta if w else None, torch.tensor(weights), final_weight=None)
    assert mod.touched == [i for i, w in enumerate(weights) if w]
    _, after = _velocity_and_seen(anima, mod)
    for i, w in enumerate(weights):
        assert torch.equal(after[i][0], before[i][0] + w * delta) if w else torch.equal(after[i][0], before[i][0])
        assert torch.equal(after[i][1], before[i][1])  # temb untouched by this family
    assert torch.equal(after["final"][0], before["final"][0])


def test_pooled_text_proj_final_layer_gets_its_own_weight(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    base, delta = torch.randn(d), torch.randn(d)
    _, before = _velocity_and_seen(anima)
    mod = build(POOLED_TEXT_PROJ, lambda w: base + w * delta, torch.full((n,), 3.0), final_weight=0.5)
    _, after = _velocity_and_seen(anima, mod)
    assert torch.allclose(after["final"][0], before["final"][0] + (base + 0.5 * delta), atol=1e-6)
    assert torch.allclose(after[2][0], before[2][0] + (base + 3.0 * delta), atol=1e-6)


def test_cosmos_family_adds_scales_times_m_to_temb_of_active_blocks_only(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    scales = torch.randn(n, 3 * d)
    m = torch.randn(1, 3 * d)
    active = torch.tensor([False, True, True, False, True])
    _, before = _velocity_and_seen(anima)
    mod = build(COSMOS, lambda w: m + w * m, torch.full((n,), 2.0), active=active, scales=scales, final_weight=None)
    assert mod.touched == [1, 2, 4]
    _, after = _velocity_and_seen(anima, mod)
    for i in range(n):
        want = before[i][1] + scales[i] * (3.0 * m) if active[i] else before[i][1]
        assert torch.equal(after[i][1], want)
        assert torch.equal(after[i][0], before[i][0])  # embedded_timestep untouched by this family
    assert torch.equal(after["final"][1], before["final"][1])  # official: norm_out sees the plain temb


def test_guidance_weight_zero_reproduces_the_unguided_velocity_exactly(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    base, delta = torch.randn(d), torch.randn(d)
    plain, _ = _velocity_and_seen(anima)
    no_base = build(POOLED_TEXT_PROJ, lambda w: w * delta if w else None, torch.zeros(n), final_weight=None)
    assert no_base.touched == [] and torch.equal(_velocity_and_seen(anima, no_base)[0], plain)
    base_only, _ = _velocity_and_seen(anima, constant(POOLED_TEXT_PROJ, base, n))
    guided_w0 = build(POOLED_TEXT_PROJ, lambda w: base + w * delta, torch.zeros(n))
    assert torch.equal(_velocity_and_seen(anima, guided_w0)[0], base_only)
    assert not torch.allclose(base_only, plain)  # the base does act: the comparison above is not vacuous


def test_rows_get_their_own_vectors(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    plain, before = _velocity_and_seen(anima, batch=3)
    rows = torch.zeros(3, d)
    rows[1] = torch.randn(d)  # only the middle row is modulated
    v, after = _velocity_and_seen(anima, constant(POOLED_TEXT_PROJ, rows, n), batch=3)
    assert torch.equal(after[0][0][1], before[0][0][1] + rows[1])
    assert torch.equal(after[0][0][0], before[0][0][0]) and torch.equal(after[0][0][2], before[0][0][2])
    assert torch.allclose(v[[0, 2]], plain[[0, 2]], atol=1e-6)
    assert not torch.allclose(v[1], plain[1], atol=1e-3)


def test_cat_stacks_row_groups_in_order():
    a = constant(POOLED_TEXT_PROJ, torch.ones(2, 4), 3)
    b = constant(POOLED_TEXT_PROJ, torch.zeros(1, 4), 3, final=False)
    with pytest.raises(ValueError, match="same blocks"):
        Modulation.cat([a, b])
    both = Modulation.cat([a, constant(POOLED_TEXT_PROJ, torch.zeros(1, 4), 3)])
    assert both.blocks[2].tolist() == [[1] * 4, [1] * 4, [0] * 4] and both.final.shape == (3, 4)


def test_hooks_are_gone_after_an_exception(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    count = _hook_count(anima)
    x, s, ctx = _inputs(anima)
    with pytest.raises(RuntimeError, match="boom"), inject(anima, constant(POOLED_TEXT_PROJ, torch.ones(d), n)):
        assert _hook_count(anima) == count + n + 1
        raise RuntimeError("boom")
    assert _hook_count(anima) == count
    bad_rows = constant(POOLED_TEXT_PROJ, torch.ones(5, d), n)  # 5 rows for a batch of 2: fails mid-forward
    with pytest.raises(ValueError, match="blocks.0 embedded_timestep: vector has 5 rows but the model batch has 2"):
        with inject(anima, bad_rows), torch.no_grad():
            anima.velocity(x, s, ctx)
    assert _hook_count(anima) == count


def test_bad_modulations_are_named_errors(anima):
    d, n = anima.dit_config.hidden, anima.num_blocks
    with pytest.raises(ValueError, match="3 block vectors, the model 5 blocks"):
        with inject(anima, constant(POOLED_TEXT_PROJ, torch.ones(d), 3)):
            pass
    with pytest.raises(ValueError, match=r"blocks.0: pooled_text_proj vectors are 1\*D = 128 wide, got 384"):
        with inject(anima, constant(POOLED_TEXT_PROJ, torch.ones(3 * d), n)):
            pass
    with pytest.raises(ValueError, match="leaves the final layer unmodified"):
        Modulation(COSMOS, (None,) * n, torch.ones(d))
    with pytest.raises(ValueError, match="unknown modulation family 'flux'"):
        Modulation("flux", (None,) * n)
    with pytest.raises(ValueError, match="needs the adapter's scales"):
        build(COSMOS, lambda w: torch.ones(3 * d), torch.ones(n))
