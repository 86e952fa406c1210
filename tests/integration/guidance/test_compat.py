"""The compatibility arms on the tiny twin: every arm samples paired cells, adapters come off bit for bit, Spectrum's
error is measured against the plain arm, and a zero-up adapter changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anima_probe.adapters.lora import LoraWeights, save_lora
from anima_probe.adapters.names import default_targets, linear_shapes
from anima_probe.guidance import compat, dose
from anima_probe.guidance.guided import prepare
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.sources import PooledTextProjection
from anima_probe.guidance.spectrum import FAST

PROMPTS = ["a cat, sitting", "a house, night"]
HOW = compat.Sampling(cfgs=(1.0, 3.0), steps=7, shift=3.0, spectrum=FAST)  # FAST caches step 5 of 7


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    from anima_probe.model.anima import load_anima

    torch.set_num_threads(1)
    anima = load_anima(tiny_model_dir)  # with its VAE: the arms score RGB images
    d = anima.dit_config.hidden
    proj = PooledTextProjection(d, anima.dit_config.text_dim)
    with torch.no_grad():  # the last layer is zero-initialised (a no-op); plant a trained-looking one
        proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(4)) / d**0.5)
    g = torch.Generator().manual_seed(0)
    lora = LoraWeights({}, {}, {})
    for m in default_targets(anima.dit_config):
        out_f, in_f = linear_shapes(anima.dit_config)[m]
        lora.down[m], lora.up[m], lora.alpha[m] = (0.3 * torch.randn(4, in_f, generator=g),
                                                   0.3 * torch.randn(out_f, 4, generator=g), 4.0)
    path = save_lora(lora, tmp_path_factory.mktemp("lora") / "planted.safetensors", "kohya", anima.dit_config)
    gp = prepare(anima, proj, PROMPTS, "masterpiece, best quality", "worst quality, blurry")
    neutral = prepare(anima, proj, PROMPTS, "a cat", "a house")
    m = compat.Model("tiny", anima, gp, 1.0, neutral, dose.neutral_dose(1.0, gp, neutral), len(PROMPTS),
                     ("plain", "lora", "spectrum"), adapters={"lora": str(path)})
    return m, str(path), initial_noise(anima, len(PROMPTS), 32, 0)


def test_every_arm_samples_paired_cells_and_adapters_come_off(setting):
    m, _, noise = setting
    before = {k: v.clone() for k, v in m.anima.transformer.state_dict().items()}
    df = compat.run_model(m, noise, HOW, neutral_cfgs=(1.0,))
    after = m.anima.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    B = len(PROMPTS)
    assert len(df) == 3 * 2 * 2 * B + 2 * B  # arms x CFG scales x (w = 0, dose) x rows, + the neutral pair
    score = df.set_index(["arm", "pair", "cfg", "level", "row"]).score.sort_index()
    # w = 0 of the neutral pair is the plain arm's w = 0 image; the planted LoRA changes what is drawn
    assert score.loc[("plain", "neutral", 1.0, "0")].equals(score.loc[("plain", "p+/p-", 1.0, "0")])
    assert not np.allclose(score.loc[("lora", "p+/p-", 3.0, "dose")], score.loc[("plain", "p+/p-", 3.0, "dose")])
    spectrum = df[df.arm == "spectrum"]
    assert (spectrum.error > 0).all() and df[df.arm != "spectrum"].error.isna().all()
    eff = compat.effects(df.assign(prompt=df.row), n_boot=100, seed=0)
    assert set(eff.arm) == {"plain", "lora", "spectrum"} and eff.minus_plain.notna().sum() == 4


def test_a_zero_up_adapter_changes_nothing(setting):
    m, path, noise = setting
    assert compat.zero_adapter_diff(m.anima, m.gp, path, m.w, noise, HOW) == 0.0


def test_an_unknown_arm_is_named(setting):
    m, _, noise = setting
    with pytest.raises(ValueError, match="unknown arm 'cache'"):
        compat.sample_arm(m.anima, m.gp, "cache", 1.0, noise, HOW)
