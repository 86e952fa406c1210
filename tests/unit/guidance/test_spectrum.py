"""Spectrum's pure parts: the schedule of real steps, the Chebyshev basis, the ridge forecast's known answers."""

from __future__ import annotations

import torch

from anima_probe.guidance.spectrum import FACTS_SHEET, FAST, SpectrumConfig, chebyshev, forecast, real_steps


def test_real_steps_at_28_steps():
    facts, fast = real_steps(28, FACTS_SHEET), real_steps(28, FAST)
    assert sum(facts) == 16 and sum(fast) == 11  # 1.75x and 2.55x fewer DiT forwards
    assert all(facts[:6]) and all(facts[-3:]) and all(fast[:5]) and fast[-1]
    # windows 2, 3, 4, 5, 6 after warm-up: cached runs of 1, 2, 3, 4, 5 steps (then 2 before the tail)
    assert "".join("R" if r else "." for r in fast) == "RRRRR.R..R...R....R.....R..R"


def test_real_steps_never_forecast_before_degree_plus_two_points():
    plan = real_steps(20, SpectrumConfig(warmup=0, tail=0))
    assert all(plan[:5]) and not all(plan)
    assert all(real_steps(4, FACTS_SHEET))  # warm-up covers a short run


def test_chebyshev_known_values():
    tau = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    X = chebyshev(tau, 3)
    torch.testing.assert_close(X[:, 2], 2 * tau**2 - 1)
    torch.testing.assert_close(X[:, 3], 4 * tau**3 - 3 * tau)
    assert X[:, 0].tolist() == [1.0] * 4 and chebyshev(tau, 1).shape == (4, 2)


def _features(fn, times, steps=28):
    """(1, 2, 3) features whose every entry follows fn(tau) times its own scale."""
    scale = torch.arange(1.0, 7.0).view(1, 2, 3)
    return [fn(2.0 * t / steps - 1.0) * scale for t in times]


def test_ridge_forecast_is_exact_for_a_cubic_in_the_limit_of_no_ridge():
    cubic = lambda tau: 0.3 - tau + 0.5 * tau**2 + 2 * tau**3  # noqa: E731
    times = [0, 1, 2, 3, 4, 6]
    cfg = SpectrumConfig(lam=1e-12, cheb_weight=1.0)
    got = forecast(times, _features(cubic, times), 9, 28, cfg)
    torch.testing.assert_close(got, _features(cubic, [9])[0], rtol=1e-6, atol=1e-6)
    # the ridge pulls the coefficients toward 0: lambda 0.1 no longer reproduces it
    assert not torch.allclose(forecast(times, _features(cubic, times), 9, 28, SpectrumConfig(cheb_weight=1.0)),
                              _features(cubic, [9])[0], atol=1e-3)


def test_extrapolation_half_is_the_line_through_the_last_two_points():
    times = [0, 1, 2, 3, 5]
    feats = _features(lambda tau: tau**2, times)
    got = forecast(times, feats, 8, 28, SpectrumConfig(cheb_weight=0.0))
    torch.testing.assert_close(got, feats[-1] + 1.5 * (feats[-1] - feats[-2]))


def test_rows_are_forecast_independently():
    times = [0, 1, 2, 3, 4]
    a = [torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(t)) for t in times]
    b = [torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(100 + t)) for t in times]
    both = forecast(times, [torch.cat([x, y]) for x, y in zip(a, b)], 7, 28)
    torch.testing.assert_close(both[:1], forecast(times, a, 7, 28))
    torch.testing.assert_close(both[1:], forecast(times, b, 7, 28))
