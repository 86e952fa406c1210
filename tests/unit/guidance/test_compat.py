"""The compatibility experiment's statistics and decision rules on tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anima_probe.guidance.compat import (
    effects,
    forwards_saved,
    novel_prompts,
    own_effects,
    run_model,
    verdicts,
)
from anima_probe.guidance.dose import clustered_mean
from anima_probe.guidance.spectrum import FACTS_SHEET, FAST
from anima_probe.toyworld.world import CONTENT_TYPES


def test_clusters_are_averaged_before_the_mean():
    # prompt 0 has two draws (1, 1), prompt 1 one (4): the mean of prompt means is 2.5, not the row mean 2
    out = clustered_mean([1.0, 1.0, 4.0], [0, 0, 1], n_boot=200, seed=0)
    assert out["mean"] == pytest.approx(2.5) and out["n"] == 2
    assert out["lo"] == pytest.approx(1.0) and out["hi"] == pytest.approx(4.0)  # resamples of two prompt means
    same = clustered_mean([0.3] * 4, [0, 1, 2, 3], n_boot=200, seed=0)
    assert (same["lo"], same["hi"], same["mde"]) == pytest.approx((0.3, 0.3, 0.0))


def _rows(model, arm, effect, prompts=6, cfgs=(1.0, 3.0), pair="p+/p-", spread=0.0, **extra):
    """Scores per cell: a prompt level shared by every arm (the pairing) + ``effect`` at the dose; ``spread``
    adds a prompt-dependent part to the effect whose mean over prompts is exactly 0."""
    base = np.linspace(5.0, 7.0, prompts)
    wiggle = spread * (np.arange(prompts) - (prompts - 1) / 2)
    out = []
    for cfg in cfgs:
        for level in ("0", "dose"):
            for r in range(prompts):
                gain = (effect[cfg] if isinstance(effect, dict) else effect) + wiggle[r]
                out.append({"model": model, "arm": arm, "pair": pair, "cfg": cfg, "level": level, "row": r,
                            "prompt": r, "score": base[r] + (gain if level == "dose" else 0.0)} | extra)
    return pd.DataFrame(out)


def test_effects_and_the_difference_from_the_plain_arm():
    df = pd.concat([_rows("m", "plain", 0.5, spread=0.1), _rows("m", "lora", 0.5, spread=0.1),
                    _rows("m", "tlora", {1.0: 0.5, 3.0: 1.25}, spread=0.1),
                    _rows("m", "plain", -0.2, pair="neutral")])
    eff = effects(df, n_boot=300, seed=0).set_index(["arm", "pair", "cfg"])
    assert eff.loc[("plain", "p+/p-", 1.0), "effect"] == pytest.approx(0.5)
    assert eff.loc[("plain", "p+/p-", 1.0), "lo"] < 0.5 < eff.loc[("plain", "p+/p-", 1.0), "hi"]
    # the same effect in an arm: the paired difference is exactly 0, with a zero-width interval
    lora = eff.loc[("lora", "p+/p-", 3.0)]
    assert (lora.minus_plain, lora.mp_lo, lora.mp_hi) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    assert eff.loc[("tlora", "p+/p-", 3.0), "minus_plain"] == pytest.approx(0.75)
    assert eff.loc[("plain", "neutral", 1.0), "effect"] == pytest.approx(-0.2)
    assert np.isnan(eff.loc[("plain", "neutral", 1.0), "minus_plain"])  # only p+/p- arms are compared


def _eff(model, arm, cfg, effect, lo, hi, mp=(0.0, -0.1, 0.1)):
    return {"model": model, "arm": arm, "pair": "p+/p-", "cfg": cfg, "effect": effect, "lo": lo, "hi": hi,
            "minus_plain": mp[0], "mp_lo": mp[1], "mp_hi": mp[2]}


def _own(model, arm, dose_gain_lo=None, increase_lo=None):
    if arm == "spectrum":
        return [{"model": model, "arm": arm, "what": "pixel_error", "level": "increase", "value": 0.0,
                 "lo": increase_lo, "hi": increase_lo + 0.1}]
    return [{"model": model, "arm": arm, "what": "novel_accuracy", "level": "dose", "value": 0.3, "gain": 0.3,
             "gain_lo": dose_gain_lo, "gain_hi": 0.5}]


def test_the_verdict_rules():
    eff = pd.DataFrame([
        _eff("m", "plain", 1.0, 0.3, 0.1, 0.5), _eff("m", "plain", 3.0, 0.0, -0.2, 0.2),
        _eff("m", "lora", 1.0, 0.3, 0.1, 0.5), _eff("m", "lora", 3.0, 0.0, -0.2, 0.2),  # no change: persists
        _eff("m", "tlora", 1.0, 0.3, 0.1, 0.5), _eff("m", "tlora", 3.0, 0.5, 0.2, 0.8, mp=(0.5, 0.2, 0.8)),
        _eff("m", "hydra", 1.0, 0.3, 0.1, 0.5), _eff("m", "hydra", 3.0, 0.0, -0.2, 0.2),
        _eff("m", "spectrum", 1.0, 0.3, 0.1, 0.5), _eff("m", "spectrum", 3.0, 0.0, -0.2, 0.2),
        _eff("n", "plain", 1.0, 0.0, -0.1, 0.1), _eff("n", "plain", 3.0, 0.4, 0.2, 0.6),
        _eff("n", "spectrum", 1.0, 0.0, -0.1, 0.1), _eff("n", "spectrum", 3.0, 0.4, 0.2, 0.6),
    ])
    own = pd.DataFrame(_own("m", "lora", 0.05) + _own("m", "tlora", 0.05) + _own("m", "hydra", 0.0)
                       + _own("m", "spectrum", increase_lo=-0.01) + _own("n", "spectrum", increase_lo=0.02))
    v = verdicts(eff, own, saves=10 / 7).set_index(["feature", "model"])
    assert v.loc[("lora", "m"), "verdict"] == "persists"
    assert v.loc[("tlora", "m"), "verdict"] == "guidance changes, own effect: kept"  # D's interval above 0 at CFG 3
    assert v.loc[("hydra", "m"), "verdict"] == "guidance persists, own effect: lost"  # gain interval touches 0
    assert v.loc[("spectrum", "m"), "verdict"] == "persists"
    assert v.loc[("spectrum", "n"), "verdict"] == "guidance persists, own effect: error grows"
    assert v.loc[("cfg", "m"), "verdict"] == "does not stack" and v.loc[("cfg", "m"), "readable_cfgs"] == "1"
    assert v.loc[("cfg", "n"), "readable_cfgs"] == "3"
    # nothing readable: a null difference says nothing
    flat = eff[eff.model == "m"].assign(lo=-0.1, hi=0.1)
    assert verdicts(flat, own, 10 / 7).set_index("feature").loc["lora", "guidance"] == "unreadable"
    # Spectrum that caches nothing has no own effect to keep
    nothing = verdicts(eff, own, saves=1.0).set_index(["feature", "model"]).loc[("spectrum", "m"), "own"]
    assert nothing == "saves nothing"
    stacked = pd.DataFrame([_eff("m", "plain", c, 0.3, 0.1, 0.5) for c in (1.0, 3.0, 5.0)])
    assert verdicts(stacked, own, 10 / 7).verdict.tolist() == ["stacks"]


def test_own_effects_pair_each_adapter_with_the_plain_arm():
    hits = {("plain", "0"): [0, 0, 0, 0], ("plain", "dose"): [0, 0, 0, 0],
            ("lora", "0"): [1, 1, 0, 0], ("lora", "dose"): [1, 0, 0, 0]}
    df = pd.DataFrame([{"model": "d", "arm": arm, "pair": "p+/p-", "cfg": 1.0, "level": level, "row": r, "prompt": r,
                        "score": 5.0, "novel": bool(h), "error": np.nan}
                       for (arm, level), hs in hits.items() for r, h in enumerate(hs)])
    own = own_effects(df, n_boot=200, seed=0).set_index(["arm", "level"])
    assert own.loc[("lora", "0"), "value"] == pytest.approx(0.5)
    assert own.loc[("lora", "dose"), "gain"] == pytest.approx(0.25)
    assert own.loc[("plain", "0"), "value"] == 0.0


def test_novel_prompts_and_the_forward_count():
    prompts = novel_prompts(3, "@tsuki_hoshi")
    assert len(prompts) == 3 and all(p.endswith(", @tsuki_hoshi") for p in prompts)
    with pytest.raises(ValueError, match="one per content type"):
        novel_prompts(len(CONTENT_TYPES) + 1, "@tsuki_hoshi")
    assert forwards_saved(10, FAST) == pytest.approx(10 / 7)
    assert forwards_saved(6, FACTS_SHEET) == 1.0  # warm-up and tail cover every step


def test_the_plain_arm_must_come_first():
    from anima_probe.guidance.compat import Model

    m = Model("m", None, None, 1.0, None, 1.0, 2, ("lora", "plain"))
    with pytest.raises(ValueError, match="plain arm must come first"):
        run_model(m, None, None, (1.0,))
