"""The colour-drift statistic and the scheduler-drift decision rules on images and tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from anima_probe.guidance.drift import (
    colour_stats,
    drift,
    planted_recovery,
    schedule_contrasts,
    summary,
)


def _solid(r, g, b, n=2, side=4):
    return torch.tensor([r, g, b]).view(1, 3, 1, 1).expand(n, 3, side, side).clone()


def test_colour_stats_known_values():
    stats = colour_stats(torch.cat([_solid(0.5, 0.25, 1.0, 1), _solid(0.0, 0.0, 0.0, 1)]))
    np.testing.assert_allclose(stats[0], [0.5, 0.25, 1.0, 0.75], rtol=1e-6)  # saturation (1 - 0.25) / 1
    np.testing.assert_allclose(stats[1], [0.0, 0.0, 0.0, 0.0])  # black: saturation 0, not NaN


def test_drift_of_a_known_shift():
    d = drift(_solid(0.6, 0.3, 0.3), _solid(0.3, 0.3, 0.3))
    assert d["d_r"].tolist() == pytest.approx([0.3, 0.3]) and d["d_g"].tolist() == pytest.approx([0.0, 0.0])
    assert d["shift"].tolist() == pytest.approx([0.3, 0.3])
    assert d["d_sat"].tolist() == pytest.approx([0.5, 0.5])  # grey (0) -> (0.6 - 0.3) / 0.6
    assert drift(_solid(0.2, 0.4, 0.6), _solid(0.2, 0.4, 0.6))[["shift", "d_sat"]].abs().to_numpy().max() == 0


def test_planted_red_shift_is_recovered_up_to_clipping():
    assert planted_recovery(_solid(0.5, 0.5, 0.5)) == pytest.approx(0.05)
    assert planted_recovery(_solid(0.98, 0.5, 0.5)) == pytest.approx(0.02)


def _table(effects: dict[str, float], n: int = 8, noise: float = 0.01) -> pd.DataFrame:
    """Shifts per prompt: a prompt level shared by every schedule (the pairing) + the schedule's effect + a
    +-noise pattern on the non-simple schedules whose mean is exactly 0."""
    base = np.linspace(0.1, 0.3, n)
    rows = [{"comparison": "guidance", "sampler": "euler", "schedule": s, "arm": "full", "w": 8.0, "row": r,
             "shift": base[r] + e + (0.0 if s == "simple" else noise * (-1) ** r), "d_sat": 0.0}
            for s, e in effects.items() for r in range(n)]
    return pd.DataFrame(rows)


def test_contrasts_find_a_planted_schedule_effect_and_not_a_null_one():
    c = schedule_contrasts(_table({"simple": 0.0, "bong_tangent": 0.05, "karras": 0.0}), 8.0, 500, 0)
    bong, karras = c[c.schedule == "bong_tangent"].iloc[0], c[c.schedule == "karras"].iloc[0]
    assert bong.above and bong.minus_simple == pytest.approx(0.05)
    assert not karras.above and karras.lo < 0 < karras.hi
    assert bong.mde == pytest.approx(2.8 * np.std([0.01, -0.01] * 4, ddof=1) / np.sqrt(8))


def test_summary_interval_contains_the_mean():
    s = summary(_table({"simple": 0.0, "beta": 0.1}), 500, 0)
    assert len(s) == 2 and (s.shift_lo <= s["shift"]).all() and (s["shift"] <= s.shift_hi).all()
    assert s.n.tolist() == [8, 8]
