"""T-LoRA's rank schedule r(u) = floor(u^alpha (R_max - R_min) + R_min), u = 1 - sigma: known answers."""

from __future__ import annotations

import pytest
import torch

from anima_probe.adapters.lora import LoraWeights
from anima_probe.adapters.tlora import TLoraSchedule, schedule_metadata, schedule_of


def test_ends_of_the_schedule():
    s = TLoraSchedule(max_rank=8)
    assert s.ranks(torch.tensor([1.0, 0.0])).tolist() == [1, 8]  # pure noise: R_min; clean: all
    assert s.mask(torch.tensor([1.0]))[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert s.mask(torch.tensor([0.0]))[0].tolist() == [1] * 8


def test_linear_in_u_at_alpha_1_and_curved_otherwise():
    s = TLoraSchedule(max_rank=8, min_rank=1)
    # u = 0.5 -> 0.5 * 7 + 1 = 4.5 -> 4; u = 0.75 -> 6.25 -> 6; u = 0.1 -> 1.7 -> 1
    assert s.ranks(torch.tensor([0.5, 0.25, 0.9])).tolist() == [4, 6, 1]
    sq = TLoraSchedule(max_rank=8, min_rank=2, alpha=2.0)
    # u = 0.5 -> 0.25 * 6 + 2 = 3.5 -> 3
    assert sq.ranks(torch.tensor([0.5])).tolist() == [3]
    r = s.ranks(torch.linspace(0, 1, 101))
    assert bool((r[1:] <= r[:-1]).all())  # fewer components as noise grows


def test_sigma_outside_0_1_is_clamped_and_bad_schedules_refused():
    s = TLoraSchedule(max_rank=4)
    assert s.ranks(torch.tensor([1.5, -0.5])).tolist() == [1, 4]
    with pytest.raises(ValueError, match="min_rank <= max_rank"):
        TLoraSchedule(max_rank=4, min_rank=5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        TLoraSchedule(max_rank=4, alpha=0.0)


def test_schedule_round_trips_through_metadata():
    s = TLoraSchedule(max_rank=8, min_rank=2, alpha=0.5)
    assert schedule_of(LoraWeights({}, {}, {}, schedule_metadata(s))) == s
    with pytest.raises(ValueError, match="plain LoRA, not a T-LoRA"):
        schedule_of(LoraWeights({}, {}, {}, {}), "x.safetensors")
