"""Spectrum on the tiny twin: the head-only path is exact given the true feature, blocks run only on real steps."""

from __future__ import annotations

import pytest
import torch

from anima_probe.guidance.samplers import cfg_velocity, initial_noise, sample_euler, simple_sigmas
from anima_probe.guidance.spectrum import FAST, FEATURE, Spectrum, SpectrumConfig, _blocks_skipped
from anima_probe.model.text import encode_prompts
from anima_probe.probes.hooks import capture, patch, sampler_step


def _contexts(anima):
    tc = encode_prompts(anima, ["1girl, solo", "scenery", ""])
    return tc.crossattn_emb[:2], tc.crossattn_emb[2:].expand(2, -1, -1)


def test_head_only_call_on_the_true_feature_is_the_full_forward(tiny_anima):
    cond, _ = _contexts(tiny_anima)
    x, sigma = initial_noise(tiny_anima, 2, 16, 0), torch.tensor([0.6])
    with torch.no_grad(), capture(tiny_anima, FEATURE) as cap:
        full = tiny_anima.velocity(x, sigma, cond)
    with torch.no_grad(), _blocks_skipped(tiny_anima), patch(tiny_anima, {FEATURE: lambda _: cap[FEATURE].value}):
        head = tiny_anima.velocity(x, sigma, cond)
    torch.testing.assert_close(head, full)
    assert len(tiny_anima.transformer.transformer_blocks) == tiny_anima.num_blocks  # restored


def test_blocks_run_only_on_real_steps_and_all_real_is_plain_sampling(tiny_anima):
    cond, uncond = _contexts(tiny_anima)
    x, sig = initial_noise(tiny_anima, 2, 16, 1), simple_sigmas(28)
    plain = sample_euler(cfg_velocity(tiny_anima.velocity, cond, uncond, 4.0), x, sig, disable=True)
    every = Spectrum(tiny_anima, 28, SpectrumConfig(warmup=28))
    assert torch.equal(sample_euler(cfg_velocity(every.model, cond, uncond, 4.0), x, sig, disable=True), plain)

    fast = Spectrum(tiny_anima, 28, FAST)
    with capture(tiny_anima, "blocks.0") as cap:
        out = sample_euler(cfg_velocity(fast.model, cond, uncond, 4.0), x, sig, disable=True)
    assert (fast.forwards, fast.head_only) == (11, 17)
    assert sorted({r.step for r in cap["blocks.0"].records}) == [i for i, r in enumerate(fast.plan) if r]
    assert out.shape == plain.shape and torch.isfinite(out).all() and not torch.equal(out, plain)


def test_spectrum_outside_a_sampler_step_fails_clearly(tiny_anima):
    cond, _ = _contexts(tiny_anima)
    sp = Spectrum(tiny_anima, 10)
    with pytest.raises(RuntimeError, match="outside a sampler step"):
        sp.model(initial_noise(tiny_anima, 2, 16, 0), torch.tensor([1.0]), cond)
    with sampler_step(12), pytest.raises(RuntimeError, match="past its 10 steps"):
        sp.model(initial_noise(tiny_anima, 2, 16, 0), torch.tensor([1.0]), cond)
