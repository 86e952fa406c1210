"""modulation-reachability on the tiny twin: the delta with a mask of ones is exactly a vector added after
t_embedding_norm, the positive control is reached, the DiT stays frozen and no hook is left, a source of the model's
size is compared with the oracle, and the toy tier's prompts are guidance-dose's."""

from __future__ import annotations

import sys

import pytest
import torch

from anima_probe.errors import UsageError
from anima_probe.guidance.dose import toy_prompts
from anima_probe.guidance.modulation import inject
from anima_probe.guidance.sources import PooledTextProjection, save_pooled_text_proj
from anima_probe.model.files import ModelFileError
from anima_probe.pipeline import experiment
from anima_probe.pipeline.manifests import TOY_MANIFEST_DIR, load_prompt_sets
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.runs import read_run
from anima_probe.probes import reachability as rc
from anima_probe.probes.hooks import add_vector, patch

SMALL = {"n_prompts": 4, "noise_seeds": 2, "sigmas": (0.3, 0.7), "side_sigmas": (0.7,), "iters": 6, "latent_size": 8, "n_boot": 200,
         "chunk": 16}


REGISTRY = experiment.discover()
MODULE = sys.modules[REGISTRY["modulation-reachability"].fn.__module__]


def _hooks(anima):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())


def test_a_mask_of_ones_is_the_vector_added_after_t_embedding_norm(tiny_anima):
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 512, 32, generator=gen)
    sigma, delta = torch.tensor([0.3, 0.7]), torch.randn(2, tiny_anima.dit_config.hidden, generator=gen)
    with torch.no_grad():
        with inject(tiny_anima, rc.masked_modulation(delta, rc.masks(tiny_anima.num_blocks, 2))):
            blocks = tiny_anima.velocity(x, sigma, ctx)
        with patch(tiny_anima, {"t_embedding_norm": add_vector(delta)}):
            after_norm = tiny_anima.velocity(x, sigma, ctx)
        with inject(tiny_anima, rc.masked_modulation(delta, torch.zeros(2, tiny_anima.num_blocks + 1))):
            zero = tiny_anima.velocity(x, sigma, ctx)
        plain = tiny_anima.velocity(x, sigma, ctx)
    assert torch.allclose(blocks, after_norm, atol=1e-5) and not torch.allclose(blocks, plain, atol=1e-3)
    assert torch.equal(zero, plain)


def test_the_run_reaches_its_positive_control_and_leaves_the_dit_frozen(tiny_anima, tmp_path):
    proj = PooledTextProjection(tiny_anima.dit_config.hidden, text_dim=tiny_anima.dit_config.text_dim)
    torch.nn.init.normal_(proj.linear_out.weight, std=0.5)  # the community init is zero: give it a response
    path = save_pooled_text_proj(proj, tmp_path / "proj.safetensors")
    hooks = _hooks(tiny_anima)
    run_dir = experiment.run("modulation-reachability", {**SMALL, "projection": str(path)}, anima=tiny_anima,
                             results=tmp_path / "results", cache_dir=tmp_path / "cache", progress=False,
                             registry=REGISTRY)
    m = read_run(run_dir).metrics
    assert _hooks(tiny_anima) == hooks
    assert not any(p.requires_grad for p in tiny_anima.transformer.parameters())
    assert m["control/r2"] > 0.9  # a target a known vector makes is reached
    assert "middle/r2" not in m  # two blocks: an early and a late one
    for fit in ("quality", "neutral", "permuted", "early", "late"):
        assert -1 < m[f"{fit}/r2@0.7"] <= 1 and m[f"{fit}/r2_ci_low"] <= m[f"{fit}/r2"] <= m[f"{fit}/r2_ci_high"]
    assert "control/r2@0.3" not in m and "early/r2@0.3" not in m  # the side fits run at side_sigmas only
    for key in ("oracle_cos", "target_cos", "vector_cos"):
        assert -1 <= m[f"{key}/pooled_text_proj@0.7"] <= 1
    assert "cosmos" not in " ".join(m)  # the shipped toy adapter does not fit the tiny model: skipped, not an error
    assert 0 < m["vs_neutral/p"] <= 1 and m["vs_neutral/p_holm"] >= m["vs_neutral/p"]
    rows = (run_dir / "fits.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (2 * 8 + 4) + 3 * 4  # header; per sigma quality and neutral on both draws and
    # the next prompt's target on one; at 0.7 the control and the two block groups on one draw


def test_the_toy_tier_uses_guidance_doses_prompts():
    assert MODULE._prompts(load_prompt_sets(TOY_MANIFEST_DIR), 16) == toy_prompts(16)


def test_side_sigmas_outside_the_grid_are_refused_naming_the_key(tiny_anima, tmp_path):
    with pytest.raises(UsageError, match=r"side_sigmas=\(0.5,\): each must be one of sigmas=\(0.3, 0.7\)"):
        experiment.run("modulation-reachability", {**SMALL, "side_sigmas": (0.5,)}, anima=tiny_anima,
                       results=tmp_path / "results", progress=False, registry=REGISTRY)
    assert not (tmp_path / "results").exists()


def test_a_named_source_that_does_not_fit_is_an_error(tiny_anima, tmp_path):
    with pytest.raises(ModelFileError, match="pooled_text_proj.safetensors: key '0.weight' has D=128 rows but the "
                                             "model has model_channels=64"):
        experiment.run("modulation-reachability", {**SMALL, "projection": str(REPO_ROOT / MODULE.SHIPPED["projection"])},
                       anima=tiny_anima, results=tmp_path / "results", cache_dir=tmp_path / "cache", progress=False,
                       registry=REGISTRY)
