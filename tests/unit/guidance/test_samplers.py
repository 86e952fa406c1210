"""Known answers for the flow samplers: straight lines, Gaussian data, schedules, CFG algebra."""

from __future__ import annotations

import math

import pytest
import torch

from anima_probe.guidance.samplers import (
    cfg_combine,
    cfg_velocity,
    er_sde_coefficients,
    ode_noise_scaler,
    official_cfg_to_scale,
    sample_er_sde,
    sample_euler,
    shift_sigma,
    simple_sigmas,
)

MU, S = 0.7, 0.5  # the Gaussian data x0 ~ N(MU, S^2) per coordinate


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact flow velocity for Gaussian data: E[noise - x0 | x_t] = (x - E[x0 | x_t]) / sigma."""
    sg = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    a = 1 - sg
    x0 = MU + a * S * S / (a * a * S * S + sg * sg) * (x - a * MU)
    return (x - x0) / sg


def gaussian_ode_endpoint(noise: torch.Tensor) -> torch.Tensor:
    # the probability-flow ODE maps each coordinate monotonically: x_sigma = a*MU + sqrt(a^2 S^2 + sigma^2) noise
    return MU + S * noise


# ---------------------------------------------------------------------------------------------- schedules
def test_shift_sigma_known_values():
    assert float(shift_sigma(0.5, 3.0)) == pytest.approx(0.75)  # 1.5 / 2
    assert float(shift_sigma(0.0, 3.0)) == 0.0 and float(shift_sigma(1.0, 3.0)) == 1.0


@pytest.mark.parametrize("steps", [1, 2, 7, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_simple_sigmas_endpoints_and_monotone(steps, shift):
    s = simple_sigmas(steps, shift)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()


def test_shift_one_is_uniform_and_shift_pushes_noise_up():
    assert torch.equal(simple_sigmas(10, 1.0), torch.linspace(1, 0, 11))
    assert (simple_sigmas(10, 3.0)[1:-1] > simple_sigmas(10, 1.0)[1:-1]).all()


@pytest.mark.parametrize("bad", [[1.0], [0.5, 0.5, 0.0], [1.2, 0.0], [0.0, 0.5], [[1.0, 0.0]]])
def test_bad_sigmas_rejected(bad):
    with pytest.raises(ValueError, match="sigmas"):
        sample_euler(lambda x, s: x, torch.zeros(1, 2), bad, disable=True)


# ---------------------------------------------------------------------------------------------- Euler
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 37])
def test_euler_recovers_x0_on_a_straight_line_in_any_number_of_steps(steps):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 3, 8, 8, generator=g,
                                                                                          dtype=torch.float64)
    out = sample_euler(lambda x, s: noise - x0, noise.clone(), simple_sigmas(steps), disable=True)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)


def test_euler_float32_straight_line_to_float_precision():
    x0, noise = torch.randn(4, 64), torch.randn(4, 64)
    out = sample_euler(lambda x, s: noise - x0, noise.clone(), simple_sigmas(13), disable=True)
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-6)


def test_euler_callback_and_velocity_contract():
    seen, sigmas_fed = [], []

    def vel(x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
        sigmas_fed.append(sigma[0].item())
        return torch.ones_like(x)

    sig = simple_sigmas(4)
    sample_euler(vel, torch.zeros(3, 5), sig, callback=seen.append, disable=True)
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"i", "sigma", "sigma_next", "x", "denoised"}
    assert sigmas_fed == pytest.approx(sig[:-1].tolist())
    # denoised = x - sigma * v with v = 1
    torch.testing.assert_close(seen[1]["denoised"], seen[1]["x"] - seen[1]["sigma"])


def test_euler_is_first_order_on_gaussian_data():
    noise = torch.randn(1, 4096, dtype=torch.float64)
    errs = [(sample_euler(gaussian_velocity, noise.clone(), simple_sigmas(n).double(), disable=True)
             - gaussian_ode_endpoint(noise)).abs().max().item() for n in (20, 40, 80)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.1) and errs[1] / errs[2] == pytest.approx(2.0, rel=0.1)


# ---------------------------------------------------------------------------------------------- ER-SDE
def test_er_sde_ode_limit_coefficients_are_the_euler_step():
    for s, t in [(1.0, 0.9), (0.8, 0.5), (0.3, 0.01)]:
        c_x, c_d0, _, _, c_noise = er_sde_coefficients(s, t, ode_noise_scaler)
        assert c_x == pytest.approx(t / s, abs=1e-12) and c_d0 == pytest.approx(1 - t / s, abs=1e-12)
        assert c_noise == 0.0


def test_er_sde_quadrature_matches_closed_form_for_the_ode_scaler():
    # phi(lam) = lam: S1 = ln(ls/lt), S2 = (ls - lt) - ls ln(ls/lt)
    s, t = 0.8, 0.3
    ls, lt = s / (1 - s), t / (1 - t)
    _, _, c_d1, c_d2, _ = er_sde_coefficients(s, t, ode_noise_scaler)
    want_d1 = (1 - t) * ((lt - ls) + lt * math.log(ls / lt))
    want_d2 = (1 - t) * ((lt - ls) ** 2 / 2 + lt * ((ls - lt) - ls * math.log(ls / lt)))
    assert c_d1 == pytest.approx(want_d1, rel=1e-10) and c_d2 == pytest.approx(want_d2, rel=1e-10)


def test_er_sde_default_scaler_renoises_fully_from_sigma_one():
    c_x, c_d0, _, _, c_noise = er_sde_coefficients(1.0, 0.9)
    assert c_x < 1e-40 and c_d0 == pytest.approx(0.1) and c_noise == pytest.approx(0.9)


def test_er_sde_first_order_ode_equals_euler():
    noise = torch.randn(2, 512, dtype=torch.float64)
    sig = simple_sigmas(17).double()
    a = sample_euler(gaussian_velocity, noise.clone(), sig, disable=True)
    b = sample_er_sde(gaussian_velocity, noise.clone(), sig, noise_scaler=ode_noise_scaler, order=1, disable=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_er_sde_ode_limit_converges_to_the_same_endpoint_as_euler_faster():
    noise = torch.randn(1, 4096, dtype=torch.float64)
    target = gaussian_ode_endpoint(noise)

    def err(fn, n, **kw):
        return (fn(gaussian_velocity, noise.clone(), simple_sigmas(n).double(), disable=True, **kw)
                - target).abs().max().item()

    ode3 = [err(sample_er_sde, n, noise_scaler=ode_noise_scaler) for n in (20, 40, 80)]
    euler80 = err(sample_euler, 80)
    assert ode3[0] > ode3[1] > ode3[2] and ode3[2] < 2e-3  # measured 0.094, 0.015, 0.0013
    assert ode3[1] < euler80  # 40 ER-SDE-3 steps beat 80 Euler steps (0.015 vs 0.064)


@pytest.mark.parametrize("order", [1, 3])
def test_er_sde_ode_limit_on_a_straight_line_lands_on_x0(order):
    x0, noise = torch.randn(2, 256, dtype=torch.float64), torch.randn(2, 256, dtype=torch.float64)
    out = sample_er_sde(lambda x, s: noise - x0, noise.clone(), simple_sigmas(9), order=order,
                        noise_scaler=ode_noise_scaler, disable=True)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)


def test_er_sde_on_point_mass_field_keeps_exact_marginals_and_lands_on_x0():
    # data = delta(x0): exact velocity (x - x0)/sigma, the straight line through any x_t. The SDE re-noises, so
    # the check is the marginal: (x_t - (1-sigma) x0)/sigma must stay unit-variance at every step.
    x0 = torch.randn(2, 50_000)
    stds = []

    def track(d):
        if d["sigma"] < 1:
            stds.append(((d["x"] - (1 - d["sigma"]) * x0) / d["sigma"]).std().item())

    out = sample_er_sde(lambda x, s: (x - x0) / s.reshape(-1, 1), torch.randn(2, 50_000), simple_sigmas(20),
                        generator=torch.Generator().manual_seed(0), callback=track, disable=True)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)  # float32; measured 1.2e-7
    assert len(stds) == 19 and max(abs(s - 1) for s in stds) < 0.01  # sd of an sd over 1e5 draws: 0.0022


def test_er_sde_samples_gaussian_data_with_the_right_moments():
    out = sample_er_sde(gaussian_velocity, torch.randn(4, 20_000), simple_sigmas(60),
                        generator=torch.Generator().manual_seed(2), disable=True)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, rel=0.01)  # measured 0.49995; order 1 gives 0.476


def test_er_sde_is_deterministic_per_generator_and_noise_matters():
    def run(seed):
        return sample_er_sde(gaussian_velocity, torch.ones(1, 64), simple_sigmas(8),
                             generator=torch.Generator().manual_seed(seed), disable=True)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_er_sde_s_noise_zero_is_deterministic_but_not_the_ode():
    def run(seed, **kw):
        return sample_er_sde(gaussian_velocity, torch.ones(1, 64, dtype=torch.float64),
                             simple_sigmas(8).double(), generator=torch.Generator().manual_seed(seed),
                             disable=True, **kw)

    assert torch.equal(run(1, s_noise=0.0), run(2, s_noise=0.0))
    assert not torch.allclose(run(1, s_noise=0.0), run(1, noise_scaler=ode_noise_scaler), atol=1e-3)


def test_er_sde_rejects_bad_order():
    with pytest.raises(ValueError, match="order"):
        sample_er_sde(gaussian_velocity, torch.ones(1, 4), simple_sigmas(3), order=4, disable=True)


# ---------------------------------------------------------------------------------------------- CFG
def test_cfg_combine_known_answers():
    c, u = torch.tensor([3.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 1.0).item() == 3.0  # scale 1 = conditional only
    assert cfg_combine(c, u, 0.0).item() == 1.0
    assert cfg_combine(c, u, 4.0).item() == 9.0


def test_official_cosmos_x0_combine_is_scale_one_plus_cfg_in_velocity_space():
    x, sigma, cfg = torch.randn(2, 16), 0.6, 3.5
    v_c, v_u = torch.randn(2, 16), torch.randn(2, 16)
    x0_c, x0_u = x - sigma * v_c, x - sigma * v_u
    official = x0_c + cfg * (x0_c - x0_u)
    ours = x - sigma * cfg_combine(v_c, v_u, official_cfg_to_scale(cfg))
    torch.testing.assert_close(official, ours)


def test_cfg_velocity_calls_both_branches():
    calls = []

    def model(x, sigma, ctx):  # a model whose cond rows move by +2 and uncond rows by 0
        calls.append((x.shape[0], sigma.shape[0]))
        return x + ctx[:, 0]

    cond, uncond = torch.full((1, 1, 3), 2.0), torch.zeros(1, 1, 3)
    fn = cfg_velocity(model, cond, uncond, 2.5)
    assert fn(torch.zeros(1, 3), torch.ones(1)).tolist() == [[5.0, 5.0, 5.0]]
    assert calls == [(2, 1)]  # both branches in ONE call, one sigma for all rows
    cells = cfg_velocity(model, cond, uncond, [1.0, 3.0])  # two cells side by side, each its own scale
    assert cells(torch.zeros(2, 3), torch.ones(2)).tolist() == [[2.0] * 3, [6.0] * 3]
    calls.clear()
    assert cfg_velocity(model, cond, None, 1.0)(torch.zeros(1, 3), torch.ones(1)).tolist() == [[2.0] * 3]
    assert calls == [(1, 1)]  # scale 1: the cond rows alone
    with pytest.raises(ValueError, match="need the uncond context"):
        cfg_velocity(model, cond, None, 4.0)
