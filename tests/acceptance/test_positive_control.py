"""The shipped positive control (data/toyworld/positive_control/): it loads through the real paths, its projection
is a community-format pooled_text_proj, and guidance with it shows the gain that was built into it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest
import torch
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


# The known answer, read from the guidance-dose experiment's own metrics on this model (pc.KNOWN_ANSWER, written by
# pc.KNOWN_ANSWER_COMMAND): the effect at the calibrated dose w_cal (dose.calibrated_w, the one definition of the
# dose) over w = 0, with a 95 % CI over prompts. The rules are the issue's, fixed before the run.
CFGS = ("1", "3", "5")
KEY = "pooled_text_proj/uniform"
# Measured (guidance_dose_metrics.json, v5, the control planted low since stop 22: Eq. 3 at w is quality 1 + 4w):
# at w_cal = 1.50 the gain is +0.30 [+0.11, +0.48] / +0.42 [+0.23, +0.60] / +0.34 [+0.15, +0.53] at CFG 1 / 3 / 5
# (MDE 0.29 / 0.28 / 0.28) and the swapped pair's CI lies below 0 at every CFG. The stop-21 control, planted in the
# middle of the scale, showed no gain (-0.39 / -0.44 / -0.29): a few-step sampler renders nothing above quality ~5,
# so that control had no gain in its images to find (benchmarks/quality_headroom.py, data/toyworld/README.md).
_DOSE_MISSED = pytest.mark.xfail(strict=True, reason="the velocity-matched dose of the low-planted control is 1.50, "
                                 "not 1 +- 25 %: p+/p- in the prompt moves the velocity further per quality step "
                                 "than the planted term does (both sides of +-w move it alike, 1.46 vs 1.39 at w = 1); "
                                 "see data/toyworld/README.md")


@pytest.fixture(scope="module")
def known():
    return json.loads(pc.KNOWN_ANSWER.read_text())


def test_committed_known_answer_is_at_the_dose_the_model_gives_today(known):
    """w_cal recomputed here (the run's calibration rows, uniform schedule) is the committed one: the metrics are
    those of today's model, projection and dose definition."""
    from anima_probe.guidance import dose
    from anima_probe.guidance.guided import prepare
    from anima_probe.guidance.samplers import initial_noise

    torch.set_num_threads(1)
    cfg = known["config"]
    anima = load_anima(pc.SHIPPED, with_vae=False)
    projection = pc.load_projection(str(pc.SHIPPED / pc.PROJECTION_FILE), anima)
    pair = load_prompt_sets()["guidance"]
    k = cfg["calibration_rows"]
    prompts = dose.toy_prompts(cfg["prompts"])[:k]
    gp = prepare(anima, projection, prompts, pair["positive"], pair["negative"])
    noise = initial_noise(anima, cfg["prompts"] * cfg["seeds"], cfg["size"], cfg["seed"])[:k]
    cal = dose.calibrated_w(anima, gp, prompts, pair["positive"], pair["negative"], noise,
                            dose.Sweep(tuple(cfg["ws"]), tuple(cfg["cfgs"]), cfg["steps"], cfg["shift"]))
    assert cal.w == pytest.approx(known["metrics"][f"{KEY}/w_cal"], rel=1e-4)


@_DOSE_MISSED
def test_the_calibrated_dose_recovers_the_planted_one(known):
    """Eq. 3's pair against the swapped pair at w spans 8w planted quality steps (positive_control.planted_weight),
    as p+ against p- in the prompt spans about 8, so a dose rule that pairs like with like should land near 1 if
    both routes move the velocity alike per quality step. It did on the stop-21 control (1.11; the one-sided rule
    before v5: 1.86); on this one it does not (1.50)."""
    assert known["metrics"][f"{KEY}/w_cal"] == pytest.approx(1.0, rel=0.25)


def test_guidance_raises_quality_at_the_calibrated_dose_at_every_cfg(known):
    """Positive control: at w_cal the prompt-clustered 95 % CI of the gain over w = 0 lies above 0 at CFG 1, 3 and
    5, in cells the breakdown rule keeps."""
    m = known["metrics"]
    assert all(m[f"{KEY}/broken/cfg{c}"] == 0.0 for c in CFGS)
    assert [m[f"{KEY}/effect_lo/cfg{c}"] > 0 for c in CFGS] == [True] * 3, {c: m[f"{KEY}/effect/cfg{c}"] for c in CFGS}


def test_swapping_p_plus_and_p_minus_lowers_quality(known):
    """Negative control: the swapped pair at the same dose (w = -w_cal): the CI lies below 0 at every CFG."""
    m = known["metrics"]
    assert [m[f"{KEY}/swapped/effect_hi/cfg{c}"] < 0 for c in CFGS] == [True] * 3
