"""The guided sampler: Eq. 3 reaches the rows and blocks it names, the delta is computed once, cells are independent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anima_probe.guidance.families import COSMOS, POOLED_TEXT_PROJ, family_of, load_source
from anima_probe.guidance.guided import (
    Cell,
    Guidance,
    modulation_for,
    prepare,
    sample_cells,
    sample_guided,
    sample_prompts,
)
from anima_probe.guidance.samplers import cfg_combine, initial_noise, sample_euler, simple_sigmas
from anima_probe.guidance.schedules import Schedule
from anima_probe.guidance.sigmas import karras_sigmas
from anima_probe.guidance.sources import (
    CosmosPooledAdapter,
    PooledTextProjection,
    save_cosmos_pooled_adapter,
    save_pooled_text_proj,
)
from anima_probe.guidance.spectrum import SpectrumConfig
from anima_probe.model.clip import load_clip, write_tiny_clip
from anima_probe.model.files import ModelFileError
from anima_probe.model.text import encode_prompts
from anima_probe.probes.pooling import pool_named

PROMPTS = ["1girl, solo", "scenery, landscape"]
POS, NEG, NEGATIVE = "masterpiece, best quality", "worst quality", "lowres"


def _proj(anima, seed=1, zero=False):
    d, text_dim = anima.dit_config.hidden, anima.dit_config.text_dim
    torch.manual_seed(seed)  # the input Linear keeps PyTorch's (global-RNG) init, as the community trainer
    proj = PooledTextProjection(d, text_dim)
    if not zero:
        with torch.no_grad():
            proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)) / d**0.5)
            proj.linear_out.bias.copy_(0.1 * torch.randn(d, generator=torch.Generator().manual_seed(seed + 1)))
    return proj


@pytest.fixture(scope="module")
def gp(tiny_anima):
    return prepare(tiny_anima, _proj(tiny_anima), PROMPTS, POS, NEG, NEGATIVE)


def _noise(anima, seed=0):
    return initial_noise(anima, len(PROMPTS), 8, seed)  # tiny twin: no VAE, 16 x 8 x 8 "pixels"


def test_schedule_text_spells_the_end_convention():
    inc, exc = Schedule.parse("interval:1:3]"), Schedule.parse("interval:1:3)")
    assert inc.weights(5, 2.0).tolist() == [0, 2, 2, 2, 0] and exc.weights(5, 2.0).tolist() == [0, 2, 2, 0, 0]
    assert Schedule.parse("step:3").active(5).tolist() == [False, False, False, True, True]
    assert Schedule.parse("uniform").weights(3, 1.5).tolist() == [1.5] * 3
    assert Schedule.parse("sorryhyun").weights(6, 3.0).tolist() == [0, 0, 3, 3, 3, 0]  # depth-mapped profile
    for text in ("uniform", "step:8", "interval:8:26]", "interval:8:27)", "sorryhyun-safe"):
        assert Schedule.parse(text).text() == text
    with pytest.raises(ValueError, match=r"interval:START:END\] \(end inclusive\)"):
        Schedule.parse("interval:8:27")


def test_projection_runs_once_per_prompt_set_never_per_step_or_cell(tiny_anima):
    proj = _proj(tiny_anima)
    calls = []
    proj.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    gp = prepare(tiny_anima, proj, PROMPTS, POS, NEG, NEGATIVE)
    assert len(calls) == 3  # all bases in one call, then P(p+) and P(p-) for the delta
    cells = [Cell(Guidance(w), 4.0) for w in (0.0, 3.0)] + [Cell(Guidance(2.0, row_policy="both"), 2.0)]
    for steps in (1, 3):
        sample_cells(tiny_anima, gp, cells, _noise(tiny_anima), steps=steps)
    assert len(calls) == 3


@pytest.mark.parametrize("policy", ["both", "cond-only", "official", "per-row-base"])
def test_row_policy_puts_the_delta_on_exactly_the_rows_it_says(tiny_anima, gp, policy):
    proj, n, B = _proj(tiny_anima), tiny_anima.num_blocks, len(PROMPTS)

    def p(texts):  # the known answer, projected independently of prepare
        tc = encode_prompts(tiny_anima, texts)
        with torch.no_grad():
            return proj(pool_named(tc.crossattn_emb, tc.t5_mask, "max_padded"))

    base, pos, neg, negative, empty = p(PROMPTS), p([POS]), p([NEG]), p([NEGATIVE]), p([""])
    delta = pos - neg
    guidance = Guidance(2.0, Schedule.parse("step:1"), final_w=0.5, row_policy=policy)
    mod = modulation_for(gp, guidance, n, cfg=True)
    for i, w in enumerate([0.0, 2.0]):
        cond, uncond = mod.blocks[i][:B], mod.blocks[i][B:]
        want_uncond = {"both": base + w * delta, "cond-only": negative, "official": empty,
                       "per-row-base": negative + w * delta}[policy]
        assert torch.allclose(cond, base + w * delta, atol=1e-6)
        assert torch.allclose(uncond, want_uncond.expand(B, -1), atol=1e-6)
    assert torch.allclose(mod.final[:B], base + 0.5 * delta, atol=1e-6)


def test_zero_initialised_projection_samples_exactly_the_unguided_image(tiny_anima):
    zero = prepare(tiny_anima, _proj(tiny_anima, zero=True), PROMPTS, POS, NEG, NEGATIVE)
    noise = _noise(tiny_anima)
    plain = sample_guided(tiny_anima, zero, None, 4.0, noise, steps=3)
    for policy in ("both", "per-row-base"):
        guided = sample_guided(tiny_anima, zero, Guidance(5.0, final_w=1.0, row_policy=policy), 4.0, noise, steps=3)
        assert torch.equal(guided, plain)


def test_weight_zero_is_the_base_only_model_and_weight_moves_the_sample(tiny_anima, gp):
    noise = _noise(tiny_anima)
    w0 = sample_guided(tiny_anima, gp, Guidance(0.0, row_policy="cond-only"), 4.0, noise, steps=3)
    w0_both = sample_guided(tiny_anima, gp, Guidance(0.0, row_policy="both"), 4.0, noise, steps=3)
    w3 = sample_guided(tiny_anima, gp, Guidance(3.0, row_policy="cond-only"), 4.0, noise, steps=3)
    plain = sample_guided(tiny_anima, gp, None, 4.0, noise, steps=3)
    assert not torch.equal(w0, w0_both)  # w = 0 still carries each row's base: the policies differ there
    assert (w3 - w0).abs().mean() > 1e-3 and (w0 - plain).abs().mean() > 1e-3


def test_plain_cell_is_the_reference_cfg_sampler(tiny_anima, gp):
    noise = _noise(tiny_anima)

    def reference(x, s):
        return cfg_combine(tiny_anima.velocity(x, s, gp.cond_ctx), tiny_anima.velocity(x, s, gp.uncond_ctx), 4.0)

    want = sample_euler(reference, noise, simple_sigmas(4), disable=True)
    assert torch.allclose(sample_guided(tiny_anima, gp, None, 4.0, noise, steps=4), want, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_any_sampler_schedule_and_spectrum_reach_the_guided_sampler(tiny_anima, gp, sampler):
    noise = _noise(tiny_anima)

    def reference(x, s):
        return cfg_combine(tiny_anima.velocity(x, s, gp.cond_ctx), tiny_anima.velocity(x, s, gp.uncond_ctx), 4.0)

    want = sample_euler(reference, noise, karras_sigmas(4), disable=True)
    got = sample_guided(tiny_anima, gp, None, 4.0, noise, steps=4, schedule="karras")
    assert torch.allclose(got, want, atol=1e-5)
    cells = [Cell(None, 4.0), Cell(Guidance(3.0), 4.0)]
    sde = sample_cells(tiny_anima, gp, cells, noise, steps=8, sampler=sampler, seed=3, schedule="bong_tangent")
    alone = sample_guided(tiny_anima, gp, cells[1].guidance, 4.0, noise, steps=8, sampler=sampler, seed=3,
                          schedule="bong_tangent")
    assert torch.equal(sde[1], alone) and not torch.equal(sde[0], sde[1])
    every_step_real = sample_guided(tiny_anima, gp, cells[1].guidance, 4.0, noise, steps=8, sampler=sampler, seed=3,
                                    schedule="bong_tangent", spectrum=SpectrumConfig(warmup=8))
    assert torch.equal(every_step_real, alone)
    cached = sample_guided(tiny_anima, gp, cells[1].guidance, 4.0, noise, steps=8, sampler=sampler, seed=3,
                           schedule="bong_tangent", spectrum=SpectrumConfig(warmup=5, tail=1))
    assert not torch.equal(cached, alone) and torch.isfinite(cached).all()
    with pytest.raises(KeyError, match="unknown sigma schedule"):
        sample_guided(tiny_anima, gp, None, 4.0, noise, steps=4, schedule="normal")


def test_a_cell_does_not_depend_on_its_grid_neighbours(tiny_anima, gp):
    noise = _noise(tiny_anima)
    cells = [Cell(None, 4.0), Cell(Guidance(3.0), 4.0), Cell(Guidance(2.0, Schedule.parse("step:1")), 2.0),
             Cell(Guidance(1.0, row_policy="official"), 1.0)]
    grid = sample_cells(tiny_anima, gp, cells, noise, steps=3)
    for k, cell in enumerate(cells):
        alone = sample_guided(tiny_anima, gp, cell.guidance, cell.cfg, noise, steps=3)
        assert torch.allclose(grid[k], alone, atol=1e-5), k
    sde = sample_cells(tiny_anima, gp, cells[:2], noise, steps=3, sampler="er_sde", seed=7)
    alone = sample_guided(tiny_anima, gp, cells[1].guidance, 4.0, noise, steps=3, sampler="er_sde", seed=7)
    assert torch.equal(sde[1], alone)


def test_a_row_does_not_depend_on_the_rows_it_shares_a_call_with(tiny_anima, gp, monkeypatch):
    """On a CPU the sampler splits cells (and, past CPU_ROWS_PER_CALL, a cell's prompts) over several DiT calls;
    the samples are those of one call with everything (float rounding of another batch size aside)."""
    import anima_probe.guidance.guided as guided

    noise = _noise(tiny_anima)
    cells = [Cell(None, 4.0), Cell(Guidance(3.0), 4.0), Cell(Guidance(2.0, Schedule.parse("step:1")), 1.0)]
    together = sample_cells(tiny_anima, gp, cells, noise, steps=3, chunk=len(cells))
    monkeypatch.setattr(guided, "CPU_ROWS_PER_CALL", 1)  # one prompt's [cond; uncond] per call: both splits
    assert guided.call_shape(tiny_anima, cells, len(gp)) == (1, 1)
    split = sample_cells(tiny_anima, gp, cells, noise, steps=3)
    assert split.shape == together.shape and torch.allclose(split, together, atol=1e-5)


def test_call_shape_fills_a_call_up_to_the_cpu_rows_and_leaves_a_gpu_one_call():
    import types

    from anima_probe.guidance.guided import CPU_ROWS_PER_CALL, call_shape

    cpu, gpu = (types.SimpleNamespace(device=torch.device(d)) for d in ("cpu", "cuda"))
    plain, cfg = [Cell(None, 1.0)] * 5, [Cell(None, 1.0)] * 4 + [Cell(None, 3.0)]
    assert call_shape(cpu, plain, CPU_ROWS_PER_CALL // 4) == (4, CPU_ROWS_PER_CALL // 4)
    assert call_shape(cpu, cfg, CPU_ROWS_PER_CALL // 4) == (2, CPU_ROWS_PER_CALL // 4)  # CFG: 2 rows a prompt
    assert call_shape(cpu, cfg, CPU_ROWS_PER_CALL) == (1, CPU_ROWS_PER_CALL // 2)  # a cell's prompts split
    assert call_shape(gpu, cfg, 1000) == (5, 1000)


def test_cosmos_family_end_to_end_with_a_tiny_clip(tiny_anima, tmp_path):
    clip = load_clip(write_tiny_clip(tmp_path / "clip", hidden=64, layers=1))
    d, n = tiny_anima.dit_config.hidden, tiny_anima.num_blocks
    adapter = CosmosPooledAdapter(d, n, clip_dim=clip.dim)
    noise = _noise(tiny_anima)
    gp0 = prepare(tiny_anima, adapter, PROMPTS, POS, NEG, clip=clip)
    plain = sample_guided(tiny_anima, gp0, None, 4.0, noise, steps=2)
    assert torch.equal(sample_guided(tiny_anima, gp0, Guidance(3.0), 4.0, noise, steps=2), plain)  # scales = 0
    with torch.no_grad():
        adapter.scales.normal_(0.0, 0.05)
    gp = prepare(tiny_anima, adapter, PROMPTS, POS, NEG, clip=clip)
    mod = modulation_for(gp, Guidance(2.0, Schedule.parse("interval:1:1]")), n)  # official: uncond = P("")
    assert mod.touched == [1] and mod.final is None
    m = adapter.project(clip.pooled(PROMPTS + [""] + [POS, NEG])).detach()
    want_cond = adapter.scales[1] * (m[:2] + 2.0 * (m[3] - m[4]))
    assert torch.allclose(mod.blocks[1][:2], want_cond, atol=1e-6)
    assert torch.allclose(mod.blocks[1][2:], (adapter.scales[1] * m[2]).expand(2, -1), atol=1e-6)
    assert (sample_guided(tiny_anima, gp, Guidance(3.0), 4.0, noise, steps=2) - plain).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="final_w applies to family pooled_text_proj"):
        modulation_for(gp, Guidance(2.0, final_w=1.0), n)


def test_load_source_tells_the_families_apart(tiny_anima, tmp_path):
    d, n = tiny_anima.dit_config.hidden, tiny_anima.num_blocks
    a = load_source(save_pooled_text_proj(_proj(tiny_anima), tmp_path / "p.safetensors"), tiny_anima)
    assert family_of(a).name == POOLED_TEXT_PROJ
    for suffix in (".pt", ".safetensors"):
        b = load_source(save_cosmos_pooled_adapter(CosmosPooledAdapter(d, n, 24), tmp_path / f"c{suffix}"), tiny_anima)
        assert family_of(b).name == COSMOS and b.clip_dim == 24
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelFileError, match="x.safetensors: neither a pooled_text_proj"):
        load_source(tmp_path / "x.safetensors", tiny_anima)
    with pytest.raises(ModelFileError, match="model_channels=64"):
        load_source(save_pooled_text_proj(PooledTextProjection(32, 32), tmp_path / "w.safetensors"), tiny_anima)


def test_cli_sample_writes_a_run_folder_with_the_resolved_settings(tiny_model_dir, tiny_anima, tmp_path):
    from anima_probe.cli import main

    proj = save_pooled_text_proj(_proj(tiny_anima), tmp_path / "proj.safetensors")
    argv = ["sample", "--model", str(tiny_model_dir), "--proj", str(proj), "--prompts", "1girl|scenery",
            "--w", "off,2", "--cfg", "1,3", "--schedule", "interval:0:0]", "--steps", "1", "--size", "16",
            "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "000-sample"
    settings = json.loads((run / "settings.json").read_text())
    assert settings["family"] == POOLED_TEXT_PROJ and settings["row_policy"] == "per-row-base"
    assert settings["w_values"] == [None, 2.0] and settings["cfg_values"] == [1.0, 3.0]
    assert settings["schedule"] == "interval:0:0]" and len(settings["proj_sha256"]) == 64
    assert np.load(run / "images.npy").shape == (2, 2, 2, 16, 16, 3)


def test_sample_prompts_is_cfg_euler_from_one_noise_draw_and_pairs_rows(tiny_anima):
    """The one plain-CFG sampler of toyworld-evidence and the 13th-artist evaluation: rows of two calls with the same
    seed share their noise, and it is Euler over cfg_combine of the two contexts."""
    a = sample_prompts(tiny_anima, PROMPTS, seed=4, steps=3, cfg=3.0, size=16)
    b = sample_prompts(tiny_anima, PROMPTS[:1], seed=4, steps=3, cfg=3.0, size=16)
    assert a.shape[:3] == (2, 16, 16) and a.dtype == np.float32  # no VAE on the twin: latent channels last
    np.testing.assert_allclose(a[:1], b, atol=1e-5)  # row 0 sees the same noise whatever follows it
    tc = encode_prompts(tiny_anima, PROMPTS + [""])
    cond, uncond = tc.crossattn_emb[:2], tc.crossattn_emb[2:].expand(2, -1, -1)

    def velocity(x, s):
        return cfg_combine(tiny_anima.velocity(x, s, cond), tiny_anima.velocity(x, s, uncond), 3.0)

    x = initial_noise(tiny_anima, 2, 16, 4)
    with torch.no_grad():
        want = tiny_anima.decode(sample_euler(velocity, x, simple_sigmas(3), disable=True))
    np.testing.assert_allclose(a, want.float().permute(0, 2, 3, 1).numpy(), atol=1e-5)
    assert not np.allclose(a, sample_prompts(tiny_anima, PROMPTS, seed=5, steps=3, cfg=3.0, size=16))
