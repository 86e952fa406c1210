"""Hook points: names resolve (modules and their arguments), captures separate call and step (the samplers mark
steps), patches edit, nothing survives an error."""

from __future__ import annotations

import pytest
import torch

from anima_probe.guidance.samplers import cfg_combine, sample_er_sde, sample_euler, simple_sigmas
from anima_probe.model.anima import load_anima
from anima_probe.model.tiny import write_tiny
from anima_probe.probes.hooks import add_vector, capture, patch, resolve, sampler_step


@pytest.fixture(scope="module")
def anima(tmp_path_factory):
    return load_anima(write_tiny(tmp_path_factory.mktemp("tiny"), with_vae=False), with_vae=False)


def _inputs():
    return torch.randn(2, 16, 8, 8), torch.tensor([0.3, 0.6]), torch.randn(2, 512, 32)


def _hook_count(anima):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())


def test_unknown_name_suggests_close_ones(anima):
    with pytest.raises(KeyError, match="did you mean t_embedding_norm"):
        resolve(anima, "t_embeding_norm")
    with pytest.raises(KeyError, match="2 blocks"):
        resolve(anima, "blocks.9")
    with pytest.raises(KeyError, match="2 blocks"):
        resolve(anima, "blocks.9.temb")
    with pytest.raises(KeyError, match="did you mean blocks.1.temb"):
        resolve(anima, "blocks.1.tmb")


def test_argument_points_name_what_the_module_reads(anima):
    point = resolve(anima, "blocks.1.temb")
    assert (point.path, point.arg, point.index) == ("transformer.transformer_blocks.1", "temb", 3)
    assert resolve(anima, "final_layer.embedded_timestep").index == 1
    assert resolve(anima, "t_embedding_norm.input").arg == "hidden_states"  # the first argument, by its name
    x, s, ctx = _inputs()
    names = ["blocks.1.temb", "blocks.0.embedded_timestep", "final_layer.embedded_timestep", "adaln_lora",
             "t_embedding_norm"]
    with capture(anima, names) as caps, torch.no_grad():
        anima.velocity(x, s, ctx)
    # every block and the final layer read the shared time embedding: the argument points see the alias outputs
    assert torch.equal(caps["blocks.1.temb"].value, caps["adaln_lora"].value)
    assert torch.equal(caps["blocks.0.embedded_timestep"].value, caps["t_embedding_norm"].value)
    assert torch.equal(caps["final_layer.embedded_timestep"].value, caps["t_embedding_norm"].value)


def test_an_argument_is_found_as_a_keyword_or_at_its_position(anima):
    norm_out = anima.transformer.norm_out
    hidden, emb, temb = torch.randn(2, 4, 64), torch.randn(2, 64), torch.randn(2, 192)
    with torch.no_grad(), capture(anima, "final_layer.embedded_timestep") as caps:
        positional = norm_out(hidden, emb, temb)
        keyword = norm_out(hidden, embedded_timestep=emb, temb=temb)
    assert [r.call for r in caps["final_layer.embedded_timestep"].records] == [0, 1]
    assert all(torch.equal(r.value, emb) for r in caps["final_layer.embedded_timestep"].records)
    assert torch.equal(positional, keyword)
    shift = torch.randn(64)
    with torch.no_grad(), patch(anima, {"final_layer.embedded_timestep": add_vector(shift)}):
        edited = [norm_out(hidden, emb, temb), norm_out(hidden, embedded_timestep=emb, temb=temb)]
    want = norm_out(hidden, emb + shift, temb)
    assert torch.equal(edited[0], want) and torch.equal(edited[1], want)
    with pytest.raises(ValueError, match="hook point 'final_layer.temb': the call passed no 'temb'"):
        with torch.no_grad(), patch(anima, {"final_layer.temb": add_vector(torch.ones(192))}):
            norm_out(hidden, emb)


def test_capture_records_call_and_step(anima):
    x, s, ctx = _inputs()
    with capture(anima, ["t_embedding_norm", "t_embedding_norm.input", "adaln_lora"]) as caps, torch.no_grad():
        for step in range(2):
            with sampler_step(step):
                anima.velocity(x, s, ctx)  # CFG: two calls per step
                anima.velocity(x, s, ctx)
    recs = caps["t_embedding_norm"].records
    assert [r.call for r in recs] == [0, 1, 2, 3] and [r.step for r in recs] == [0, 0, 1, 1]
    assert caps["adaln_lora"].value.shape == (2, 3 * 64)
    before, after = caps["t_embedding_norm.input"].value, caps["t_embedding_norm"].value
    assert not torch.allclose(before, after)  # the norm sits between the two


@pytest.mark.parametrize("sampler", [sample_euler, sample_er_sde])
def test_samplers_mark_their_steps_and_cfg_as_two_calls_fires_twice_per_step(anima, sampler):
    x, _, ctx = _inputs()
    uncond = torch.zeros_like(ctx)

    def velocity(x_t, sigma):  # CFG as two model calls: call index runs twice as fast as the step
        return cfg_combine(anima.velocity(x_t, sigma, ctx), anima.velocity(x_t, sigma, uncond), 4.0)

    with capture(anima, "blocks.0.temb") as caps:
        sampler(velocity, x, simple_sigmas(3), disable=True)
    records = caps["blocks.0.temb"].records
    assert [r.step for r in records] == [0, 0, 1, 1, 2, 2] and [r.call for r in records] == list(range(6))
    assert len(caps["blocks.0.temb"].at_step(2)) == 2


def test_zero_patch_is_identity_and_nonzero_changes_velocity(anima):
    x, s, ctx = _inputs()
    with torch.no_grad():
        base = anima.velocity(x, s, ctx)
        with patch(anima, {"t_embedding_norm": add_vector(torch.zeros(64))}):
            assert torch.equal(anima.velocity(x, s, ctx), base)
        with patch(anima, {"t_embedding_norm": add_vector(torch.ones(64), alpha=2.0)}):
            assert not torch.allclose(anima.velocity(x, s, ctx), base)


def test_hooks_removed_after_an_error(anima):
    x, s, ctx = _inputs()
    before = _hook_count(anima)
    def broken(v):
        raise ZeroDivisionError("an edit that fails mid-forward")

    with pytest.raises(ZeroDivisionError):
        with patch(anima, {"blocks.0": broken}):
            anima.velocity(x, s, ctx)
    assert _hook_count(anima) == before


def test_stop_ends_the_forward_before_the_blocks(anima):
    x, s, ctx = _inputs()
    with capture(anima, ["adaln_lora", "blocks.1"]) as full, torch.no_grad():
        anima.velocity(x, s, ctx)
    with capture(anima, "adaln_lora", stop=True) as early, capture(anima, "blocks.1") as late, torch.no_grad():
        anima.velocity(x, s, ctx)
    assert torch.equal(early["adaln_lora"].value, full["adaln_lora"].value)
    assert not late["blocks.1"].records  # the blocks never ran
