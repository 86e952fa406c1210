"""The shipped distilled toy sources (data/toyworld/*.safetensors) load against the shipped toy model and do what
they were trained for: bring the empty-prompt student closer to the teacher on unseen toy images."""

from __future__ import annotations

import numpy as np
import pytest

from anima_probe.guidance.sources import load_cosmos_pooled_adapter, load_pooled_text_proj
from anima_probe.model.anima import load_anima
from anima_probe.model.clip import load_clip
from anima_probe.toyworld.imageset import write_image_set
from anima_probe.training.data import prepare_data
from anima_probe.training.distill import DistillConfig, Student


@pytest.mark.parametrize("family", ["pooled_text_proj", "cosmos"])
def test_shipped_toy_sources_beat_the_empty_prompt_on_unseen_images(family, tmp_path):
    """data/toyworld/*.safetensors (trained by the command in data/toyworld/README.md) load against the toy model
    and bring the student closer to the teacher than the no-source student, on toy images of an unused seed."""
    from accelerate import Accelerator

    from anima_probe.pipeline.provenance import REPO_ROOT
    from anima_probe.training.distill import make_validation, validate

    anima = load_anima()
    clip = load_clip(REPO_ROOT / "data/toyworld/model/clip") if family == "cosmos" else None
    if family == "cosmos":
        source = load_cosmos_pooled_adapter(REPO_ROOT / "data/toyworld/cosmos_pooled_adapter.safetensors",
                                            anima.dit_config.hidden, anima.num_blocks)
    else:
        source = load_pooled_text_proj(REPO_ROOT / "data/toyworld/pooled_text_proj.safetensors", anima.dit_config.hidden)
    cfg = DistillConfig(family=family, val_count=16, val_sigmas=(0.1, 0.7))
    data = prepare_data(anima, cfg, write_image_set(tmp_path, n=17, seed=99), tmp_path / "d.pt", clip, False)
    val, acc = make_validation(cfg, anima, data, 0, 1), Accelerator(cpu=True)
    trained = validate(anima, Student(source, anima.num_blocks), data, val, acc)["val_loss"]
    assert trained < 0.95 * validate(anima, None, data, val, acc, source=False)["val_loss"]



def test_the_destroyed_w8_guidance_images_score_at_the_floor():
    """guidance-dose v2's grid top w = 8 (its guidance_grid_*.png figures showed noise and stripes) for both
    shipped sources: every image is out of the scorer's range and scores its floor, not the 3-4 it used to."""
    from anima_probe.guidance import families, guided
    from anima_probe.guidance.dose import toy_prompts
    from anima_probe.guidance.samplers import initial_noise
    from anima_probe.pipeline.manifests import load_prompt_sets
    from anima_probe.pipeline.provenance import REPO_ROOT
    from anima_probe.toyworld.scorer import FLOOR, in_range, quality_score

    anima = load_anima(with_vae=False)
    pair = load_prompt_sets()["guidance"]
    prompts = toy_prompts(4) * 2
    noise = initial_noise(anima, len(prompts), 32, 0)
    clip = load_clip(REPO_ROOT / "data/toyworld/model/clip")
    for name in ("pooled_text_proj", "cosmos_pooled_adapter"):
        source = families.load_source(REPO_ROOT / f"data/toyworld/{name}.safetensors", anima)
        gp = guided.prepare(anima, source, prompts, pair["positive"], pair["negative"],
                            clip=clip if name == "cosmos_pooled_adapter" else None)
        cells = [guided.Cell(guided.Guidance(8.0), cfg) for cfg in (1.0, 3.0, 5.0)]
        x = guided.sample_cells(anima, gp, cells, noise, steps=8, shift=3.0)
        images = anima.decode(x.flatten(0, 1)).permute(0, 2, 3, 1).numpy()  # (3 * 8, 32, 32, 3)
        assert not in_range(images).any(), name
        assert np.all(quality_score(images) == FLOOR), name
