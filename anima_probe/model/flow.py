"""Anima's flow-matching conventions in one place, so every probe, trainer and sampler agrees (sources:
docs/anima.md, "Flow-matching conventions").

x_t = sigma·noise + (1 − sigma)·x0; the model predicts the velocity v ≈ noise − x0; the denoised estimate is
x0 = x_t − sigma·v. sigma ∈ [0, 1] is the model's timestep input (not ×1000). The sampling schedule is shifted:
sigma = s·t / (1 + (s − 1)·t), with Anima's default s = 3.
"""

from __future__ import annotations

import torch

DEFAULT_SHIFT = 3.0


def _col(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma (B,) or scalar, shaped to broadcast against x (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return _col(sigma, x0) * noise + (1 - _col(sigma, x0)) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def denoised(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_t - _col(sigma, x_t) * v


def shift_sigma(t: torch.Tensor | float, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, torch.Tensor) else t.dtype)
    return shift * t / (1 + (shift - 1) * t)


def logit_normal_sigmas(n: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0,
                        shift: float = 1.0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Training noise levels as Anima's trainers draw them: sigmoid(N(mean, std)), optionally shifted."""
    u = torch.randn(n, generator=generator, device=device) * std + mean  # (n,)
    return shift_sigma(torch.sigmoid(u), shift)
