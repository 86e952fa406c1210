"""Injection-point MSE: exact zero at alpha 0, growth with alpha, RMSNorm saturation, the adaln_lora split (per block
only vs per block + final layer), the swap test's controls, run folder, no hook left."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from anima_probe.guidance.sources import PooledTextProjection, save_pooled_text_proj
from anima_probe.model.anima import load_anima
from anima_probe.model.files import ModelFileError
from anima_probe.model.tiny import write_tiny
from anima_probe.pipeline import experiment
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.runs import read_run
from anima_probe.probes import sensitivity as injection
from anima_probe.probes.sensitivity import (
    INJECTION_POINTS,
    after_vs_before,
    base_velocity,
    contrast,
    growth_vs,
    point_width,
    prompt_means,
    random_projection,
    rescale_to_rms,
    velocity_mse,
)

SMALL = {"n_prompts": 3, "latent_size": 8, "sigmas": (0.3, 0.7), "alphas": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
         "n_boot": 200}


def _registry():
    """Only this experiment's file, so a half-written neighbour in experiments/ cannot break these tests."""
    name = "anima_probe_experiments.injection_mse"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / "injection_mse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return {module.EXPERIMENT.name: module.EXPERIMENT}


@pytest.fixture(scope="module")
def anima(tmp_path_factory):
    return load_anima(write_tiny(tmp_path_factory.mktemp("tiny"), with_vae=False), with_vae=False)


def _hook_count(anima):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())


def _inputs(b=2):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 16, 8, 8, generator=gen), torch.tensor([0.3, 0.7][:b]), torch.randn(b, 512, 32, generator=gen)


def _run(anima, tmp_path, **overrides):
    return experiment.run("injection-mse", {**SMALL, **overrides}, anima=anima, results=tmp_path / "results",
                          cache_dir=tmp_path / "cache", progress=False, registry=_registry())


def test_random_projection_keeps_unit_rms_and_rescale_hits_the_target():
    w = random_projection(256, 512, seed=3)
    assert torch.equal(w, random_projection(256, 512, seed=3))  # fixed by the seed
    v = torch.randn(64, 256) @ w  # (64, 512)
    assert abs(injection.rms(v) - 1.0) < 0.05
    assert abs(injection.rms(rescale_to_rms(v, 0.25)) - 0.25) < 1e-6
    assert torch.equal(rescale_to_rms(torch.zeros(3, 4), 2.0), torch.zeros(3, 4))


def test_the_raw_sinusoid_has_rms_one_over_sqrt_two(anima):
    # cos² + sin² = 1 per frequency, so the input of t_embedding_norm has mean square exactly 1/2
    _, act = base_velocity(anima, *_inputs())
    assert act["before_norm"] == pytest.approx(2**-0.5, rel=1e-5)
    assert act["after_norm"] > 0 and act["adaln_lora"] > 0


def test_alpha_zero_is_exact_and_a_zero_vector_changes_nothing(anima):
    x, s, ctx = _inputs()
    for point in INJECTION_POINTS:
        vec = torch.randn(2, point_width(anima, point))
        assert velocity_mse(anima, point, vec, [0.0], x, s, ctx).tolist() == [[0.0, 0.0]]  # (alphas, rows)
        assert not velocity_mse(anima, point, torch.zeros_like(vec), [1.0, 8.0], x, s, ctx).any()


def test_before_norm_saturates_after_norm_does_not(anima):
    """RMSNorm(s + a·v) -> RMSNorm(v) as a grows: doubling a huge alpha changes nothing before the norm."""
    x, s, ctx = _inputs()
    vec = torch.randn(2, point_width(anima, "before_norm"))
    before = velocity_mse(anima, "before_norm", vec, [1e3, 2e3], x, s, ctx).mean(1)
    after = velocity_mse(anima, "after_norm", vec, [1e3, 2e3], x, s, ctx).mean(1)
    assert before[1] / before[0] == pytest.approx(1.0, abs=1e-2)
    assert after[1] / after[0] > 1.5


def test_wrong_vector_shape_and_unknown_point_are_errors(anima):
    x, s, ctx = _inputs()
    with pytest.raises(ValueError, match=r"adaln_lora: vectors must be \(B=2, 192\)"):
        velocity_mse(anima, "adaln_lora", torch.zeros(2, 64), [1.0], x, s, ctx)
    with pytest.raises(KeyError, match="unknown injection point 'after'"):
        velocity_mse(anima, "after", torch.zeros(2, 64), [1.0], x, s, ctx)


def test_adaln_lora_split_differs_only_through_the_final_layer(anima):
    """The final norm_out reads temb[..., :2D]: a vector that is zero there moves both adaln points identically,
    and one that is not moves them differently (the per-block-only point leaves the final layer alone)."""
    x, s, ctx = _inputs()
    d = anima.dit_config.hidden
    vec = torch.randn(2, 3 * d)
    tail_only = torch.cat([torch.zeros(2, 2 * d), vec[:, 2 * d:]], 1)  # (2, 3D), nothing in what norm_out reads
    both, blocks = (velocity_mse(anima, p, tail_only, [4.0], x, s, ctx) for p in ("adaln_lora", "adaln_lora_blocks"))
    assert torch.allclose(both, blocks, rtol=1e-5, atol=1e-9) and both.min() > 0
    both, blocks = (velocity_mse(anima, p, vec, [4.0], x, s, ctx) for p in ("adaln_lora", "adaln_lora_blocks"))
    assert not torch.allclose(both, blocks, rtol=1e-3)


def test_prompt_means_average_a_prompts_noise_draws_and_sigmas():
    mse = torch.arange(12.0).reshape(1, 2, 6).numpy()  # (alphas 1, sigmas 2, rows 6 = 3 prompts x 2 noise draws)
    assert prompt_means(mse, 3).tolist() == [[3.5, 5.5, 7.5]]  # prompt 0: rows 0, 1 at both sigmas: 0 1 6 7
    with pytest.raises(ValueError, match="do not split into 4 prompts"):
        prompt_means(mse, 4)


def test_swap_contrast_finds_a_planted_2x_point_and_not_two_copies_of_one():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, (8, 2))  # (prompts, alphas 4 and 8)
    planted = contrast(2 * base[:, :1], base[:, :1], after_vs_before, n_boot=500)
    assert planted["value"] == pytest.approx(2.0) and planted["ci_low"] > 1.0
    assert planted["p"] == pytest.approx(1 / 256) and planted["null_q50"] == pytest.approx(1.0, abs=0.2)
    copy = base * rng.uniform(0.95, 1.05, base.shape)  # the same point measured twice
    same = contrast(copy, base, growth_vs, n_boot=500)
    assert same["p"] > 0.05 and same["value"] == pytest.approx(1.0, abs=0.1) and same["mde"] > 0


def test_run_writes_every_metric_and_mse_grows_with_alpha(anima, tmp_path):
    assert _hook_count(anima) == 0
    run_dir = _run(anima, tmp_path)
    assert _hook_count(anima) == 0  # every hook was removed
    metrics = read_run(run_dir).metrics
    alphas = SMALL["alphas"]
    for prefix in ("", "absolute/"):  # RMS-matched (ours) and the proposal's absolute vectors
        for p in INJECTION_POINTS:
            assert metrics[f"{prefix}mse/{p}/alpha_0"] == 0.0
            assert metrics[f"{prefix}mse_ci_low/{p}/alpha_4"] <= metrics[f"{prefix}mse/{p}/alpha_4"] <= metrics[
                f"{prefix}mse_ci_high/{p}/alpha_4"]
            assert metrics[f"{prefix}growth_4_to_8/{p}"] == pytest.approx(
                metrics[f"{prefix}mse/{p}/alpha_8"] / metrics[f"{prefix}mse/{p}/alpha_4"])
        for p in ("after_norm", "adaln_lora", "adaln_lora_blocks"):
            curve = [metrics[f"{prefix}mse/{p}/alpha_{a:g}"] for a in alphas]
            assert all(lo < hi for lo, hi in zip(curve, curve[1:])), (p, curve)
        ratio = metrics[f"{prefix}after_vs_before_a2/value"]
        assert ratio == pytest.approx(metrics[f"{prefix}mse/after_norm/alpha_2"] / metrics[f"{prefix}mse/before_norm/alpha_2"])
        for test in ("after_vs_before_a2", "growth_after_vs_adaln_lora", "growth_after_vs_adaln_lora_blocks"):
            assert metrics[f"{prefix}{test}/p"] >= 1 / 2 ** SMALL["n_prompts"]  # exact swap null of 3 prompts
            assert metrics[f"{prefix}{test}/p_holm"] >= metrics[f"{prefix}{test}/p"]
    assert metrics["act_rms/before_norm"] == pytest.approx(2**-0.5, rel=1e-5)  # the raw sinusoid
    assert {"injection_mse.csv", "per_prompt.csv", "prompts.md"} <= {f.name for f in run_dir.iterdir()}
    per_prompt = (run_dir / "per_prompt.csv").read_text().splitlines()
    assert len(per_prompt) == 1 + 2 * len(INJECTION_POINTS) * len(alphas) * SMALL["n_prompts"]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["alphas"] == list(alphas) and config["seed"] == 0


def test_zero_trained_projection_gives_zero_at_the_time_embedding(anima, tmp_path):
    path = save_pooled_text_proj(PooledTextProjection(64, text_dim=32), tmp_path / "proj.safetensors")  # zero-init
    metrics = read_run(_run(anima, tmp_path, projection=str(path))).metrics
    assert all(metrics[f"{w}mse/{p}/alpha_{a:g}"] == 0.0 for w in ("", "absolute/") for p in ("before_norm", "after_norm")
               for a in SMALL["alphas"])
    assert metrics["mse/adaln_lora/alpha_8"] > 0  # adaln_lora keeps its own (random) 3D projection
    assert metrics["after_vs_before_a2/value"] == 0.0  # no response at either point: 0, not 0/0


def test_projection_of_the_wrong_width_names_the_file(anima, tmp_path):
    path = save_pooled_text_proj(PooledTextProjection(48, text_dim=32), tmp_path / "wide.safetensors")
    with pytest.raises(ModelFileError, match="wide.safetensors.*model_channels=64"):
        _run(anima, tmp_path, projection=str(path))


def test_hooks_are_removed_when_the_run_fails_midway(anima, tmp_path, monkeypatch):
    calls = []

    def failing_add_vector(vector, alpha=1.0):
        def edit(v):
            calls.append(alpha)
            if len(calls) == 3:
                raise FloatingPointError("edit fails inside the patched forward")
            return v + alpha * vector
        return edit

    monkeypatch.setattr(injection, "add_vector", failing_add_vector)
    with pytest.raises(FloatingPointError):
        _run(anima, tmp_path)
    assert len(calls) == 3 and _hook_count(anima) == 0
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").glob("0*"))
