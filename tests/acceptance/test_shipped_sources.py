"""The shipped distilled toy sources (data/toyworld/*.safetensors) load against the shipped toy model and do what
they were trained for: bring the empty-prompt student closer to the teacher on unseen toy images."""

from __future__ import annotations

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

