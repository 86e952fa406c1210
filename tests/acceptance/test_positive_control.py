"""The shipped positive control (data/toyworld/positive_control/): it loads through the real paths, its projection
is a community-format pooled_text_proj, and guidance with it shows the gain that was built into it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest
from safetensors import safe_open

from anima_probe.model.anima import default_model_dir, load_anima
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.toyworld import positive_control as pc
from anima_probe.toyworld.train import PROFILES

RECORD = pc.SHIPPED.parent / "train.json"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_model_and_projection_load_in_the_real_formats():
    anima = load_anima(pc.SHIPPED, with_vae=False)
    config = json.loads((pc.SHIPPED / "toyworld.json").read_text())
    assert config == asdict(PROFILES["positive-control-cpu"])  # trained with the profile it names
    projection = pc.load_projection(str(pc.SHIPPED / pc.PROJECTION_FILE), anima)  # checks D against the model
    assert (projection.text_dim, projection.model_channels) == (config["text_dim"], config["hidden"])
    with safe_open(str(pc.SHIPPED / pc.PROJECTION_FILE), framework="pt") as f:
        assert sorted(f.keys()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    # The frozen text side is the default model's, byte for byte (same seed, same captions, same tokenizers).
    for rel in ("text_encoders/qwen3-toyworld.safetensors", "qwen25_tokenizer/tokenizer.json",
                "t5_tokenizer/tokenizer.json"):
        assert _sha(pc.SHIPPED / rel) == _sha(default_model_dir() / rel), rel


def test_training_record_fits_the_cpu_budget_of_an_idle_machine():
    record = json.loads(RECORD.read_text())
    assert record["config"] == asdict(PROFILES["positive-control-cpu"])
    assert record["idle_projection_seconds"] <= record["budget_seconds"]
    assert record["wall_seconds"] > 0 and record["process_cpu_seconds"] > 0 and record["load_average_1min"]["mean"] > 0


@pytest.fixture(scope="module")
def checks():
    anima = load_anima(pc.SHIPPED, with_vae=False)
    projection = pc.load_projection(str(pc.SHIPPED / pc.PROJECTION_FILE), anima)
    pair = load_prompt_sets()["guidance"]
    return {"p+/p-": pc.guidance_check(anima, projection, pair["positive"], pair["negative"]),
            "swapped": pc.guidance_check(anima, projection, pair["negative"], pair["positive"])}


def test_guidance_raises_quality_at_small_doses_at_every_cfg(checks):
    """Positive control: at w in 0.5..2 the prompt-clustered 95 % CI of the gain over w = 0 lies above 0 at CFG 1,
    3 and 5, on images the scorer can read."""
    table = checks["p+/p-"]
    dosed = table[table.w > 0]
    assert len(dosed) == 9 and (dosed.lo > 0).all(), dosed
    assert (table.in_range >= 0.9).all(), table


def test_swapping_p_plus_and_p_minus_lowers_quality(checks):
    """Negative control: the swapped pair moves the score the other way at every dose and CFG."""
    dosed = checks["swapped"][checks["swapped"].w > 0]
    assert len(dosed) == 9 and (dosed.effect < 0).all(), dosed
