"""The family registry: a third modulation family is one record. Registered in this test only, a pooled-text source
whose vector enters every block's AdaLN-LoRA term (``temb``) samples, distils, saves, loads and runs from the CLI
through the public API with no other change."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from anima_probe.guidance import families
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.families import COSMOS, POOLED_TEXT_PROJ, Family, family_of, load_source
from anima_probe.guidance.guided import Guidance, modulation_for, prepare, sample_guided
from anima_probe.guidance.modulation import inject
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.sources import PooledTextProjection
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from anima_probe.probes.hooks import capture
from anima_probe.probes.pooling import pool_named
from anima_probe.training.distill import DistillConfig, distill

PROMPTS = ["1girl, solo", "scenery, landscape"]
POS, NEG, NEGATIVE = "masterpiece, best quality", "worst quality", "lowres"


class AdalnSource(nn.Module):
    """Pooled crossattn_emb (B, P) -> (B, 3D), zero-initialised: a no-op until trained."""

    def __init__(self, d: int, pooled_dim: int):
        super().__init__()
        self.toy_adaln = nn.Linear(pooled_dim, 3 * d)
        nn.init.zeros_(self.toy_adaln.weight)
        nn.init.zeros_(self.toy_adaln.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.toy_adaln(pooled.to(self.toy_adaln.weight.dtype))  # (B, 3D)


def _save(source: AdalnSource, path) -> Path:
    save_file({k: v.detach().cpu().contiguous() for k, v in source.state_dict().items()}, str(path))
    return Path(path)


def _load(path, anima) -> AdalnSource:
    tensors = load_file(str(path))
    source = AdalnSource(anima.dit_config.hidden, tensors["toy_adaln.weight"].shape[1])
    source.load_state_dict(tensors)
    return source


TOY = Family(
    name="toy_adaln", block_arg="temb", width=3, final_arg=None, every_block=True,
    default_policy=CFGRowPolicy.PER_ROW_BASE, needs_clip=False, pool=families.pool_crossattn,
    source_type=AdalnSource, new_source=lambda d, n, p: AdalnSource(d, p), project=lambda s, pooled: s(pooled),
    block_scales=None, check=lambda source, anima: None, key="toy_adaln.weight", suffixes=(".safetensors",),
    load=_load, save=_save, file_name="toy_adaln.safetensors")


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setattr(families, "REGISTRY", dict(families.REGISTRY))  # registered for this test only
    return families.register(TOY)


def _trained(anima, seed=0) -> AdalnSource:
    source = AdalnSource(anima.dit_config.hidden, anima.dit_config.text_dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return source


def test_registry_holds_the_two_published_families_and_names_unknown_ones():
    assert {POOLED_TEXT_PROJ, COSMOS} <= set(families.REGISTRY)
    assert families.get(COSMOS).final_arg is None and families.get(POOLED_TEXT_PROJ).width == 1
    assert family_of(PooledTextProjection(8, 4)).name == POOLED_TEXT_PROJ
    with pytest.raises(ValueError, match="unknown modulation family 'toy_adaln'"):
        families.get("toy_adaln")
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.get(COSMOS))


def test_a_registered_family_enters_where_its_record_says(tiny_anima, toy_family):
    source, B = _trained(tiny_anima), len(PROMPTS)
    gp = prepare(tiny_anima, source, PROMPTS, POS, NEG, NEGATIVE)
    assert gp.family == "toy_adaln" and gp.base_cond.shape == (B, 3 * tiny_anima.dit_config.hidden)
    assert Guidance().policy(gp.family) is CFGRowPolicy.PER_ROW_BASE

    def p(texts):  # the known answer, projected independently of prepare
        tc = encode_prompts(tiny_anima, texts)
        with torch.no_grad():
            return source(pool_named(tc.crossattn_emb, tc.t5_mask, "max_padded"))

    want = p(PROMPTS) + 2.0 * (p([POS]) - p([NEG]))  # (B, 3D) Eq. 3 on every block's temb
    x, sigma = initial_noise(tiny_anima, B, 8, 0), torch.full((B,), 0.5)
    names = ["blocks.0.temb", "blocks.1.temb", "blocks.1.embedded_timestep", "final_layer.temb"]
    with torch.no_grad(), capture(tiny_anima, names) as plain:
        tiny_anima.velocity(x, sigma, gp.cond_ctx)
    with torch.no_grad(), inject(tiny_anima, modulation_for(gp, Guidance(2.0), tiny_anima.num_blocks, cfg=False)), \
            capture(tiny_anima, names) as guided:
        tiny_anima.velocity(x, sigma, gp.cond_ctx)
    for i in range(tiny_anima.num_blocks):
        got = guided[f"blocks.{i}.temb"].value - plain[f"blocks.{i}.temb"].value
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(guided["blocks.1.embedded_timestep"].value, plain["blocks.1.embedded_timestep"].value)
    assert torch.equal(guided["final_layer.temb"].value, plain["final_layer.temb"].value)  # final layer untouched
    with pytest.raises(ValueError, match="final_w applies to family pooled_text_proj"):
        modulation_for(gp, Guidance(2.0, final_w=1.0), tiny_anima.num_blocks)
    noise = initial_noise(tiny_anima, B, 8, 0)
    zero = prepare(tiny_anima, AdalnSource(tiny_anima.dit_config.hidden, tiny_anima.dit_config.text_dim), PROMPTS,
                   POS, NEG, NEGATIVE)
    plain_image = sample_guided(tiny_anima, zero, None, 4.0, noise, steps=2)
    assert torch.equal(sample_guided(tiny_anima, zero, Guidance(3.0), 4.0, noise, steps=2), plain_image)
    assert (sample_guided(tiny_anima, gp, Guidance(3.0), 4.0, noise, steps=2) - plain_image).abs().mean() > 1e-4


def test_a_registered_family_distils_loads_back_and_samples_from_the_cli(tiny_anima, tiny_model_dir, toy_family,
                                                                         tmp_path):
    rows = [CaptionRow(id=f"r{i}", caption=c, artist="@a") for i, c in
            enumerate(["score_9, 1girl", "mecha, robot", "scenery, sunset", "still life, fruit", "abstract"])]
    write_caption_set(rows, tmp_path / "captions.csv")
    cfg = DistillConfig(family="toy_adaln", data="teacher", resolution=8, steps=4, batch_size=4, val_count=1,
                        val_sigmas=(0.5,), val_every=2, checkpoint_every=2, teacher_steps=2, warmup=1, lr=3e-3)
    path = distill(cfg, tmp_path / "run", tmp_path / "captions.csv", tiny_anima, progress=False)
    assert path.name == "toy_adaln.safetensors"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # zero-initialised: at step 0 the student is the no-source student
    assert summary["val_start"]["val_loss"] == pytest.approx(summary["val_nosource"]["val_loss"], rel=1e-6)
    with (tmp_path / "run" / "loss.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    loaded = load_source(path, tiny_anima)
    assert family_of(loaded) is TOY and loaded.toy_adaln.weight.abs().max() > 0  # it trained
    from anima_probe.cli import main

    argv = ["sample", "--model", str(tiny_model_dir), "--proj", str(path), "--prompts", "1girl|scenery", "--w",
            "off,2", "--cfg", "1,3", "--steps", "1", "--size", "16", "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 0
    settings = json.loads((tmp_path / "runs" / "000-sample" / "settings.json").read_text())
    assert settings["family"] == "toy_adaln" and settings["row_policy"] == "per-row-base"
