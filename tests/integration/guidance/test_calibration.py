"""The calibrated dose: the modulation's velocity change matches the text's, and the dose is in units of the delta
(twice the delta, half the w), on the tiny twin with a planted projection."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from anima_probe.guidance import dose
from anima_probe.guidance.guided import prepare
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.sources import PooledTextProjection

PROMPTS = ["a cat, sitting", "a house, night"]
POS, NEG = "masterpiece, best quality", "worst quality, blurry"
SWEEP = dose.Sweep((0.0, 1.0), (1.0,), steps=3)


@pytest.fixture(scope="module")
def setting(tiny_model_dir):
    from anima_probe.model.anima import load_anima

    torch.set_num_threads(1)
    anima = load_anima(tiny_model_dir, with_vae=False)
    d = anima.dit_config.hidden
    proj = PooledTextProjection(d, anima.dit_config.text_dim)
    with torch.no_grad():  # the last layer is zero-initialised (a no-op); plant a trained-looking one
        proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(4)) / d**0.5)
    gp = prepare(anima, proj, PROMPTS, POS, NEG)
    return anima, gp, initial_noise(anima, len(PROMPTS), 32, 0)


def test_the_dose_matches_the_text_change_within_tolerance(setting):
    anima, gp, noise = setting
    cal = dose.calibrated_w(anima, gp, PROMPTS, POS, NEG, noise, SWEEP)
    assert cal.w > 0 and cal.text_norm > 0
    assert cal.ratio == pytest.approx(1.0, abs=0.01)


def test_the_dose_is_in_units_of_the_delta(setting):
    """w only ever multiplies the delta, so doubling the delta must halve the calibrated w (up to the search's
    tolerance), and the text change, which never sees the delta, must not move at all."""
    anima, gp, noise = setting
    one = dose.calibrated_w(anima, gp, PROMPTS, POS, NEG, noise, SWEEP, tolerance=1e-4, iterations=12)
    two = dose.calibrated_w(anima, replace(gp, delta=2 * gp.delta), PROMPTS, POS, NEG, noise, SWEEP, tolerance=1e-4,
                            iterations=12)
    assert two.text_norm == one.text_norm
    assert two.w == pytest.approx(one.w / 2, rel=1e-3)


def test_the_dose_compares_like_with_like_so_swapping_the_pair_keeps_it(setting):
    """The text side contrasts p+ with p-, the modulation side the pair with the swapped pair (+w against -w): so
    swapping p+ and p- (delta -> -delta) must give exactly the dose it gave. A one-sided modulation change (w
    against 0, the rule before v5) breaks this wherever the response to +w and -w differ in size."""
    anima, gp, noise = setting
    one = dose.calibrated_w(anima, gp, PROMPTS, POS, NEG, noise, SWEEP)
    swapped = dose.calibrated_w(anima, replace(gp, delta=-gp.delta), PROMPTS, NEG, POS, noise, SWEEP)
    assert swapped.text_norm == pytest.approx(one.text_norm, rel=1e-6)
    assert swapped.w == pytest.approx(one.w, rel=1e-6) and swapped.mod_norm == pytest.approx(one.mod_norm, rel=1e-6)


def test_no_change_to_calibrate_against_is_named(setting):
    anima, gp, noise = setting
    with pytest.raises(ValueError, match="does not move the velocity"):
        dose.calibrated_w(anima, replace(gp, delta=torch.zeros_like(gp.delta)), PROMPTS, POS, NEG, noise, SWEEP)
    with pytest.raises(ValueError, match="do not change the velocity"):
        dose.calibrated_w(anima, gp, PROMPTS, POS, POS, noise, SWEEP)
