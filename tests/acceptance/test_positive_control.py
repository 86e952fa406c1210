"""The shipped positive control (data/toyworld/positive_control/): it loads through the real paths, its projection
is a community-format pooled_text_proj, and guidance with it shows the gain that was built into it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pandas as pd
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


# The known answer, measured (data/toyworld/positive_control/guidance_check.csv): at w_cal the planted gain is seen at
# CFG 1 only (+0.23 [+0.12, +0.35]; CFG 3 / 5: +0.04 / +0.02, CIs across 0), the swapped pair lowers the score at
# CFG 1 and 3 but not clearly at 5, and the neutral pair lowers it too at CFG 1 and 3 (-0.29, -0.15). These rules
# were fixed before that run; they stay as written and are marked strict xfail (an unexpected pass fails), so the
# defect stays visible until the model is retrained with headroom above its w = 0 quality (see data/toyworld/README.md).
_KNOWN_DEFECT = pytest.mark.xfail(strict=True, reason="the shipped positive control's quality gain is too small to "
                                  "clear these rules (guidance_check.csv); see data/toyworld/README.md")


@pytest.fixture(scope="module")
def model():
    anima = load_anima(pc.SHIPPED, with_vae=False)
    pair = load_prompt_sets()["guidance"]
    return anima, pc.load_projection(str(pc.SHIPPED / pc.PROJECTION_FILE), anima), pair["positive"], pair["negative"]


@pytest.fixture(scope="module")
def check():
    """The committed run of the check (`python -m anima_probe.toyworld.positive_control --out CSV`, ~20 CPU
    minutes): every row, and the rows at the calibrated dose. Its reproducibility is tested below on a part."""
    table = pd.read_csv(pc.SHIPPED.parent / "guidance_check.csv")
    return table, table[table.w == table.w_cal]


def test_committed_check_is_at_the_dose_the_model_gives_today(model, check):
    anima, projection, pos, neg = model
    assert pc.calibrated_dose(anima, projection, pos, neg) == pytest.approx(check[0].w_cal.iloc[0], abs=1e-4)


@pytest.mark.slow
def test_committed_check_is_reproduced_at_cfg_1(model, check):
    """The p+/p- rows at CFG 1 (a sixth of the committed run's sampling) come out as committed (4-decimal CSV)."""
    anima, projection, pos, neg = model
    committed = check[0][(check[0].pair == "p+/p-") & (check[0].cfg == 1.0)].reset_index(drop=True)
    w_cal = pc.calibrated_dose(anima, projection, pos, neg)  # unrounded (the csv keeps 4 decimals)
    fresh = pc.guidance_check(anima, projection, pos, neg, ws=(0.0, w_cal / 2, w_cal), cfgs=(1.0,))
    for column in ("effect", "lo", "hi", "score"):
        assert fresh[column].to_numpy() == pytest.approx(committed[column].to_numpy(), abs=2e-4), column


@pytest.mark.slow
def test_calibrated_dose_lies_inside_the_trained_quality_span(check):
    """The dose is where the top planted quality's own tags sit along P(p+) - P(p-): positive, and well below the
    proposal's w = 0.5, which for this model is already past every trained caption."""
    w_cal = check[0][check[0].pair == "p+/p-"].w_cal.iloc[0]
    assert 0.0 < w_cal < 0.5, w_cal


@pytest.mark.slow
@_KNOWN_DEFECT
def test_guidance_raises_quality_at_the_calibrated_dose_at_every_cfg(check):
    """Positive control: at w_cal the prompt-clustered 95 % CI of the gain over w = 0 lies above 0 at CFG 1, 3 and
    5, on images the scorer can read."""
    rows = check[1][check[1].pair == "p+/p-"]
    assert len(rows) == 3 and (rows.lo > 0).all(), rows
    assert (check[0].in_range >= 0.9).all(), check[0]


@pytest.mark.slow
@_KNOWN_DEFECT
def test_swapping_p_plus_and_p_minus_lowers_quality(check):
    """The swapped pair at the same dose: the CI lies below 0 at every CFG."""
    rows = check[1][check[1].pair == "swapped"]
    assert len(rows) == 3 and (rows.hi < 0).all(), rows


@pytest.mark.slow
@_KNOWN_DEFECT
def test_a_neutral_tag_pair_finds_no_quality_change(check):
    """Negative control: two artist tags (independent of quality in the world), dosed to the same modulation
    length, move the quality score by an amount whose CI contains 0 at every CFG."""
    rows = check[1][check[1].pair == "neutral"]
    assert len(rows) == 3 and ((rows.lo <= 0) & (rows.hi >= 0)).all(), rows
