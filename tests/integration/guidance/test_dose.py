"""guidance-dose: w = 0 is bit for bit the base-projection model, a planted delta moves the images and a zero one
does not, both families on one footing, and the dose statistics give known answers on constructed scores."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from anima_probe.guidance import dose
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.sources import (
    CosmosPooledAdapter,
    PooledTextProjection,
    save_cosmos_pooled_adapter,
    save_pooled_text_proj,
)
from anima_probe.model.clip import write_tiny_clip
from anima_probe.pipeline.experiment import Context, apply_overrides, get
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.toyworld.world import QUALITY_LEVELS

TINY = {"prompts": "2", "seeds": "1", "ws": "0,2,4", "cfgs": "1,3", "steps": "2", "n_boot": "20",
        "grid_columns": "2", "cosmos_adapter": "none"}
EXPERIMENT = get("guidance-dose")


@pytest.fixture(autouse=True)
def _one_thread():
    """Two torch threads competing with other jobs on the shared 2-core machine are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rgb_anima(tiny_model_dir):
    """The tiny twin with its VAE, so samples decode to RGB the scorer can read."""
    from anima_probe.model.anima import load_anima

    return load_anima(tiny_model_dir, with_vae=True)


def _projection(anima, path, planted: bool):
    d, text_dim = anima.dit_config.hidden, anima.dit_config.text_dim
    torch.manual_seed(3)
    proj = PooledTextProjection(d, text_dim)  # last layer zero-initialised: a no-op until trained
    if planted:
        with torch.no_grad():
            proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(4)) / d**0.5)
    return str(save_pooled_text_proj(proj, path))


def _run(anima, tmp_path, **overrides):
    config = apply_overrides(EXPERIMENT.config(), {**TINY, **overrides})
    return EXPERIMENT.fn(Context(anima, tmp_path / "cache", progress=False), config)


def test_planted_delta_moves_images_and_w0_is_exactly_the_base_model(rgb_anima, tmp_path):
    res = _run(rgb_anima, tmp_path, projection=_projection(rgb_anima, tmp_path / "p.safetensors", planted=True))
    m, fam = res.metrics, "pooled_text_proj"
    for cfg in ("1", "3"):
        assert m[f"{fam}/w0_max_abs_diff/cfg{cfg}"] == 0.0  # measured against the hand-written base sampler
        assert m[f"{fam}/pixel_change/cfg{cfg}"] > 1e-3  # w_max moves the images
        assert m[f"{fam}/w0_vs_plain_max_abs_diff/cfg{cfg}"] > 1e-3  # y = P(p) is itself a model change
        for key in ("effect", "effect_lo", "effect_hi", "spearman", "slope"):
            assert f"{fam}/per-row-base/{key}/cfg{cfg}" in m
        assert f"{fam}/cond-only/effect/cfg{cfg}" in m  # the contrast policy: w = 0 and w_max only
        assert f"p_plus_prompt/effect/cfg{cfg}" in m and f"{fam}/base_effect/cfg{cfg}" in m
    assert m[f"{fam}/w0_max_abs_diff"] == 0.0 and 0.0 <= m[f"{fam}/per-row-base/persists"] <= 1.0
    jitter = pd.read_csv(pd.io.common.StringIO(res.tables["w0_batch_jitter.csv"]))
    assert len(jitter) == 2 and (jitter.w0_batch_max_abs_diff < 1e-4).all()  # float noise, kept out of the gate
    assert not any("w0_batch" in k for k in m)
    assert all(math.isfinite(v) for v in m.values()) and set(res.higher_is_better) == set(m)
    assert res.higher_is_better[f"{fam}/w0_max_abs_diff"] is False
    assert set(res.figures) == {"dose_response", "grid_pooled_text_proj"}
    table = pd.read_csv(pd.io.common.StringIO(res.tables["scores.csv"]))
    # per CFG: plain + 3 weights (own) + 2 (contrast) rows per prompt, then the p+ prompt baseline
    assert len(table) == 2 * 2 * (1 + 3 + 2) + 2 * 2
    at_cfg1 = table[(table.cfg == 1) & (table.arm == "guided")]
    own = at_cfg1[at_cfg1.policy == "per-row-base"].set_index(["w", "row"]).score
    contrast = at_cfg1[at_cfg1.policy == "cond-only"].set_index(["w", "row"]).score
    assert np.array_equal(own.loc[contrast.index].to_numpy(), contrast.to_numpy())  # CFG 1: the same images


def test_zero_initialised_projection_changes_nothing(rgb_anima, tmp_path):
    res = _run(rgb_anima, tmp_path, projection=_projection(rgb_anima, tmp_path / "z.safetensors", planted=False))
    m, fam = res.metrics, "pooled_text_proj"
    for cfg in ("1", "3"):
        assert m[f"{fam}/pixel_change/cfg{cfg}"] == 0.0 and m[f"{fam}/w0_vs_plain_max_abs_diff/cfg{cfg}"] == 0.0
        assert m[f"{fam}/per-row-base/effect/cfg{cfg}"] == 0.0 and m[f"{fam}/per-row-base/slope/cfg{cfg}"] == 0.0
        assert m[f"{fam}/per-row-base/spearman/cfg{cfg}"] == 0.0  # no change counts as no trend, never NaN
    assert m[f"{fam}/per-row-base/persists"] == 0.0


def test_both_families_on_the_same_prompts_noise_and_weights(rgb_anima, tmp_path):
    clip = write_tiny_clip(tmp_path / "clip", hidden=64, layers=1)
    adapter = CosmosPooledAdapter(rgb_anima.dit_config.hidden, rgb_anima.num_blocks, clip_dim=64)
    with torch.no_grad():
        adapter.scales.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    res = _run(rgb_anima, tmp_path, projection=_projection(rgb_anima, tmp_path / "p.safetensors", planted=True),
               cosmos_adapter=str(save_cosmos_pooled_adapter(adapter, tmp_path / "c.safetensors")), clip=str(clip),
               ws="0,4")
    m = res.metrics
    assert m["cosmos/w0_max_abs_diff"] == 0.0 and m["cosmos/pixel_change/cfg3"] > 1e-4
    assert {"cosmos/official/effect/cfg3", "cosmos/both/effect/cfg3", "grid_cosmos"} <= set(m) | set(res.figures)
    table = pd.read_csv(pd.io.common.StringIO(res.tables["scores.csv"]))
    plain = table[table.arm == "plain"].pivot_table(index=["cfg", "row"], columns="family", values="score")
    assert np.array_equal(plain["cosmos"], plain["pooled_text_proj"])  # one plain model, one noise, both families
    # official (uncond P("")) and both (uncond P(prompt)) differ at w = 0, so "both" is sampled there at CFG 3
    both0 = table[(table.policy == "both") & (table.w == 0) & (table.cfg == 3)].score.to_numpy()
    official0 = table[(table.policy == "official") & (table.w == 0) & (table.cfg == 3)].score.to_numpy()
    assert not np.array_equal(both0, official0)
    roles = [line.split(",")[0] for line in res.tables["sources.csv"].splitlines()[1:]]
    assert roles[:2] == ["projection", "cosmos_adapter"] and "clip" in roles  # every input file, with its sha256


def test_missing_or_absent_sources_are_named(rgb_anima, tmp_path):
    with pytest.raises(FileNotFoundError, match="projection='/nope.safetensors'"):
        _run(rgb_anima, tmp_path, projection="/nope.safetensors")
    with pytest.raises(ValueError, match="no modulation source"):
        _run(rgb_anima, tmp_path, projection="none")
    with pytest.raises(ValueError, match="ws must contain 0"):
        dose.Sweep((1.0, 2.0), (1.0,))


def test_defaults_point_at_the_shipped_toy_world_sources():
    shipped = sys.modules[EXPERIMENT.fn.__module__].SHIPPED
    assert all((REPO_ROOT / rel).exists() for rel in shipped.values()), shipped


def test_dose_statistics_known_answers():
    table = pd.DataFrame([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0]], columns=[0.0, 1.0, 2.0])
    assert dose.within_row_spearman(table) == pytest.approx(0.0)  # +1, -1, and a flat row counted 0
    assert dose.within_row_spearman(table.iloc[:1]) == pytest.approx(1.0)
    w = np.array([0.0, 1.0, 4.0])
    assert dose.ols_slope(pd.DataFrame([2 * w + 7, 2 * w - 3], columns=w)) == pytest.approx(2.0)
    assert dose.paired_effect(np.full(6, 0.25), n_boot=20, seed=0) == pytest.approx((0.25, 0.25, 0.25))
    rows = [{"arm": "guided", "policy": "p", "w": w_, "cfg": c, "row": r, "score": r + c * w_}
            for c in (1.0, 3.0) for w_ in (0.0, 2.0) for r in range(4)]
    out = dose.dose_metrics(pd.DataFrame(rows), "p", (1.0, 3.0), n_boot=20, seed=0)
    assert out["effect/cfg1"] == pytest.approx(2.0) and out["effect/cfg3"] == pytest.approx(6.0)
    assert out["persists"] == 1.0 and "spearman/cfg1" not in out  # two weights: no dose curve to rank


def test_contrast_policy_samples_w0_only_where_its_uncond_row_differs():
    P = CFGRowPolicy
    assert dose._contrast_ws(P.PER_ROW_BASE, P.COND_ONLY, 8.0) == [8.0]
    assert dose._contrast_ws(P.OFFICIAL, P.BOTH, 8.0) == [0.0, 8.0]
    assert dose._contrast_ws(P.OFFICIAL, None, 8.0) == []


def test_toy_prompts_carry_no_quality_or_resolution_tags():
    prompts = dose.toy_prompts(12)
    assert len(set(prompts)) == 12 and all(p.count("@") == 1 for p in prompts)
    banned = ["quality", "masterpiece", "absurdres", "highres", "lowres"] + [f"score_{q}" for q in QUALITY_LEVELS]
    assert not any(b in p for p in prompts for b in banned)
