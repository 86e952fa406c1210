"""Known answers for the user schedules in flow sigmas: endpoints, monotonicity, hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from anima_probe.guidance.samplers import simple_sigmas
from anima_probe.guidance.sigmas import (
    SCHEDULES,
    beta_sigmas,
    bong_tangent_sigmas,
    exponential_sigmas,
    flow_sigma_min,
    karras_sigmas,
    schedule_sigmas,
    sgm_uniform_sigmas,
)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("steps", [2, 3, 8, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_every_schedule_runs_from_one_to_zero_strictly_down(name, steps, shift):
    s = schedule_sigmas(name, steps, shift)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()


def test_flow_sigma_min_is_the_tables_first_entry():
    assert flow_sigma_min(1.0) == pytest.approx(0.001)
    assert flow_sigma_min(3.0) == pytest.approx(0.003 / 1.002)


def test_sgm_uniform_hand_values():
    # t = linspace(1, 0.001, 3)[:-1] = [1, 0.5005]; shift 1 leaves them; then 0
    assert sgm_uniform_sigmas(2, 1.0).tolist() == pytest.approx([1.0, 0.5005, 0.0])
    # shift 3: the grid ends at the shifted table's sigma_min 0.003/1.002 (ComfyUI's timestep of a flow sigma is
    # the sigma itself), so the middle t is (1 + 0.003/1.002)/2, then shifted: 3t / (1 + 2t)
    t = (1 + 0.003 / 1.002) / 2
    assert sgm_uniform_sigmas(2, 3.0)[1].item() == pytest.approx(3 * t / (1 + 2 * t), rel=1e-6)


def test_karras_hand_values():
    # rho = 7, sigma in [0.001, 1], two points then 0: the middle of a 3-point ramp is ((1 + 0.001^(1/7)) / 2)^7
    s = karras_sigmas(3, 1.0)
    assert s[1].item() == pytest.approx(((1 + 0.001 ** (1 / 7)) / 2) ** 7, rel=1e-6)  # 0.07210...
    assert s[2].item() == pytest.approx(0.001, rel=1e-6)


def test_exponential_hand_values():
    assert exponential_sigmas(3, 1.0).tolist() == pytest.approx([1.0, math.sqrt(0.001), 0.001, 0.0], rel=1e-6)


def test_beta_hand_values_and_uniform_beta_is_simple():
    # Beta(0.6, 0.6) is symmetric, so its median is 0.5; shift 3 maps 0.5 to 0.75
    assert beta_sigmas(2, 3.0).tolist() == pytest.approx([1.0, 0.75, 0.0])
    torch.testing.assert_close(beta_sigmas(10, 3.0, alpha=1.0, beta=1.0), simple_sigmas(10, 3.0))
    # U-shaped Beta(0.6, 0.6) spends steps at both ends: the first step is shorter than simple's
    assert beta_sigmas(20)[1] > simple_sigmas(20)[1]


def test_bong_tangent_hand_values():
    # steps 4: n = 6 points, split at int(3.6) = 3, slope 0.2 / (6/40) = 4/3; stage 1 pivots at 3, stage 2 at 0
    def f(x, pivot):
        return ((2 / math.pi) * math.atan(-(4 / 3) * (x - pivot)) + 1) / 2

    first = 0.5 + 0.5 * (f(1, 3) - f(2, 3)) / (f(0, 3) - f(2, 3))
    second = 0.5 * (f(1, 0) - f(2, 0)) / (f(0, 0) - f(2, 0))
    assert bong_tangent_sigmas(4).tolist() == pytest.approx([1.0, first, 0.5, second, 0.0], rel=1e-6)
    assert (first, second) == pytest.approx((0.8572, 0.1175), abs=1e-4)
    assert bong_tangent_sigmas(2).tolist() == [1.0, 0.5, 0.0]
    # the shape is already a share of noise: the shift does not move it
    assert torch.equal(bong_tangent_sigmas(9, 1.0), bong_tangent_sigmas(9, 5.0))


def test_unknown_schedule_and_bad_steps_fail_clearly():
    with pytest.raises(KeyError, match="known: simple, sgm_uniform"):
        schedule_sigmas("karas", 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="steps >= 2"):
        bong_tangent_sigmas(1)
