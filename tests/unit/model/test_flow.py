"""Flow conventions: x_t = (1 - sigma) x0 + sigma noise, the velocity target and the denoised estimate."""

from __future__ import annotations

import torch

from anima_probe.model.flow import add_noise, denoised, shift_sigma, velocity_target


def test_flow_conventions_recover_x0():
    x0, noise, sigma = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0.0, 0.4, 1.0])
    x_t = add_noise(x0, noise, sigma)
    torch.testing.assert_close(denoised(x_t, velocity_target(x0, noise), sigma), x0)
    assert torch.allclose(shift_sigma(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([0.0, 0.75, 1.0]))
