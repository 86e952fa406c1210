"""The distillation-quality probe's statistics on constructed responses: the teacher's own response scores cosine
1 and ratio 1, twice it ratio 2, its opposite cosine -1, none at all 0 / 0; each sigma is read on its own rows."""

from __future__ import annotations

import pytest
import torch

from anima_probe.errors import UsageError
from anima_probe.training.response import ResponseProbe, quality_pair, response_columns, response_metrics

GRID = (0.2, 0.7)


def _probe() -> ResponseProbe:
    g = torch.Generator().manual_seed(0)
    n = 6  # rows alternate between the two sigmas
    sigma = torch.tensor(GRID).repeat(n // 2)
    pooled = torch.randn(2, n, 5, generator=g)
    return ResponseProbe(torch.randn(n, 3, 4, 4, generator=g), sigma, pooled, torch.randn(n, 3, 4, 4, generator=g),
                         GRID)


def _student(probe: ResponseProbe, scale_at: dict[float, float]):
    """A fake student whose p+ minus p- response is scale(sigma) x the teacher's (p+ rows: +half, p-: -half)."""
    def velocity(x_t, sigma, pooled):
        sign = 1.0 if torch.equal(pooled, probe.pooled[0]) else -1.0
        scale = torch.tensor([scale_at[float(s)] for s in sigma.tolist()]).view(-1, 1, 1, 1)
        return x_t + sign * 0.5 * scale * probe.teacher

    return velocity


@pytest.mark.parametrize(("scales", "cos", "norm"), [
    ({0.2: 1.0, 0.7: 1.0}, {0.2: 1.0, 0.7: 1.0}, {0.2: 1.0, 0.7: 1.0}),
    ({0.2: 2.0, 0.7: -1.0}, {0.2: 1.0, 0.7: -1.0}, {0.2: 2.0, 0.7: 1.0}),
    ({0.2: 0.0, 0.7: 0.5}, {0.2: 0.0, 0.7: 1.0}, {0.2: 0.0, 0.7: 0.5}),
])
def test_known_responses(scales, cos, norm):
    probe = _probe()
    sigmas = {g: float(torch.tensor(g, dtype=torch.float32)) for g in GRID}  # the float32 keys the rows carry
    out = response_metrics(_student(probe, {sigmas[g]: s for g, s in scales.items()}), probe)
    assert set(out) == set(response_columns(GRID))
    for g in GRID:
        assert out[f"resp_cos@{g:g}"] == pytest.approx(cos[g], abs=1e-5)
        assert out[f"resp_norm@{g:g}"] == pytest.approx(norm[g], abs=1e-5)


def test_the_pair_is_the_proposals_or_a_named_variant():
    pos, neg = quality_pair("proposal")
    assert "masterpiece" in pos and "worst quality" in neg
    with pytest.raises(UsageError, match="response_pair='nope': choose from"):
        quality_pair("nope")
