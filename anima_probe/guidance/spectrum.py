"""How many DiT forwards can a sampler skip by forecasting the last block's output? Spectrum, as a model wrapper.

Spectrum (Han, Shi, Li, Ye, Guo, Ermon, "Adaptive Spectral Feature Forecasting for Diffusion Sampling
Acceleration", CVPR 2026, arXiv 2603.01623) treats the feature the DiT hands its head (the input of
``final_layer``, hook point ``final_layer.input``) as a function of sampling time, fits it on the real steps with a
Chebyshev basis by ridge regression, ``(X^T X + lambda I) C = X^T H``, and on skipped steps runs only the head
(``final_layer`` + unpatchify, here: the DiT call with its blocks removed and the forecast fed to the head) on
``h* = [T_0(tau*), ..., T_m(tau*)] C``. The forecast is blended with a first-order (two-point) extrapolation of the
last two real features. Written from the paper's equations; the schedule of real steps follows the window rule the
paper's Appendix B.1 and the community sampler (sorryhyun's ComfyUI-Spectrum-KSampler) describe.

``Spectrum(anima, steps).model`` has ``anima.velocity``'s signature, so it goes under ``cfg_velocity`` and any
sampler in ``samplers.SAMPLERS``; the samplers mark their steps (``hooks.sampler_step``), which is how it knows the
step. Modulation guidance still reaches cached steps through ``final_layer.embedded_timestep`` (the head's own
input); its per-block edits ride on the real steps' features, as in the community node.

Choices the facts sheet left open (docs/modulation-guidance.md, "Spectrum as anima_probe builds it"), and what we
chose:
- "m = 3": the community code's ``cheby_degree = 3``, i.e. degree 3, four basis functions T_0..T_3.
- "Taylor blend 0.3": in both codes that weight multiplies the *Chebyshev* forecast; the two-point extrapolation
  gets 0.7 (``cheb_weight`` below).
- time variable: the step index i of N steps, ``tau = 2 i / N - 1`` (sigma would bunch the points under a shift).
- cond and uncond rows: the regression is linear and column-wise, so one solve over the whole CFG batch *is* a
  separate forecaster per row (cond and uncond alike); rows never mix.
- a new run (step 0) starts a fresh history; a forecast needs ``degree + 2`` real features first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from anima_probe.probes.hooks import capture, current_step, patch

FEATURE = "final_layer.input"


@dataclass(frozen=True)
class SpectrumConfig:
    degree: int = 3  # Chebyshev T_0..T_degree
    lam: float = 0.1  # ridge strength
    cheb_weight: float = 0.3  # forecast = w * Chebyshev + (1 - w) * two-point extrapolation
    window: float = 2.0  # initial window N: floor(window) - 1 cached steps, then a real one
    flex: float = 0.25  # the window grows by this after every real step past warm-up (the paper's alpha)
    warmup: int = 6  # first steps always real
    tail: int = 3  # last steps always real


FACTS_SHEET = SpectrumConfig()
# Fixed before any error was measured, to reach the issue's >= 2.5x fewer forwards at 28 steps (the facts sheet's
# defaults give 16 real of 28, 1.75x): the window grows by a whole step after each real step (windows 2, 3, 4, 5,
# 6), the fewest warm-up steps a degree-3 fit allows (5), one real step at the end: 11 real of 28 (2.55x).
FAST = SpectrumConfig(flex=1.0, warmup=5, tail=1)


def real_steps(steps: int, cfg: SpectrumConfig = FACTS_SHEET) -> list[bool]:
    """Which of ``steps`` steps run the DiT: warm-up and tail always; between, a real step closes each window of
    ``floor(window)`` steps, the window growing by ``flex`` after each real step (needs ``degree + 2`` real first)."""
    out, window, cached, seen = [], cfg.window, 0, 0
    for i in range(steps):
        forced = i < cfg.warmup or i >= steps - cfg.tail or seen < cfg.degree + 2
        real = forced or (cached + 1) % max(1, math.floor(window)) == 0
        if real and i >= cfg.warmup and not forced:
            window = round(window + cfg.flex, 6)
        cached = 0 if real else cached + 1
        seen += real
        out.append(real)
    return out


def chebyshev(tau: torch.Tensor, degree: int) -> torch.Tensor:
    """(K, degree+1) design matrix [T_0(tau), ..., T_degree(tau)] by the three-term recurrence."""
    cols = [torch.ones_like(tau), tau]
    while len(cols) <= degree:
        cols.append(2 * tau * cols[-1] - cols[-2])
    return torch.stack(cols[: degree + 1], dim=1)


def forecast(times: list[int], feats: list[torch.Tensor], t_star: int, steps: int,
             cfg: SpectrumConfig = FACTS_SHEET) -> torch.Tensor:
    """The blended forecast at step ``t_star`` from real features ``feats`` (each (B, N, D)) at steps ``times``."""
    tau = torch.tensor([2.0 * t / steps - 1.0 for t in times + [t_star]], dtype=torch.float64)  # (K+1,)
    X = chebyshev(tau[:-1], cfg.degree)  # (K, P)
    H = torch.stack([f.reshape(-1) for f in feats]).double()  # (K, F)
    A = X.T @ X + cfg.lam * torch.eye(X.shape[1], dtype=X.dtype)  # (P, P)
    C = torch.linalg.solve(A, X.T @ H)  # (P, F)
    cheb = chebyshev(tau[-1:], cfg.degree) @ C  # (1, F)
    k = (t_star - times[-1]) / (times[-1] - times[-2])
    line = H[-1] + k * (H[-1] - H[-2])  # (F,)
    out = cfg.cheb_weight * cheb[0] + (1.0 - cfg.cheb_weight) * line
    return out.to(feats[-1].dtype).view_as(feats[-1])  # (B, N, D)


@contextlib.contextmanager
def _blocks_skipped(anima) -> Iterator[None]:
    """The DiT without its blocks: patch embedding, time embedding, head. Restored in ``finally``."""
    tr = anima.transformer
    blocks = tr.transformer_blocks
    tr.transformer_blocks = torch.nn.ModuleList()
    try:
        yield
    finally:
        tr.transformer_blocks = blocks


class Spectrum:
    """``model(x, sigma, context)`` like ``anima.velocity``, running the DiT blocks only on ``real_steps``."""

    def __init__(self, anima, steps: int, cfg: SpectrumConfig = FACTS_SHEET):
        self.anima, self.steps, self.cfg = anima, steps, cfg
        self.plan = real_steps(steps, cfg)
        self.forwards = 0  # DiT forwards with blocks, over the object's life (every run)
        self.head_only = 0
        self._times: list[int] = []
        self._feats: list[torch.Tensor] = []

    def model(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        i = current_step()
        if i is None or not 0 <= i < self.steps:
            raise RuntimeError(f"Spectrum: called outside a sampler step or past its {self.steps} steps (step {i})")
        if i == 0:
            self._times, self._feats = [], []
        if self.plan[i]:
            with capture(self.anima, FEATURE) as cap:
                v = self.anima.velocity(x, sigma, context)
            self._times.append(i)
            self._feats.append(cap[FEATURE].value)  # (B, N, D)
            self.forwards += 1
            return v
        if self._feats[-1].shape[0] != x.shape[0]:
            raise RuntimeError(f"Spectrum: batch changed from {self._feats[-1].shape[0]} to {x.shape[0]} rows")
        h = forecast(self._times, self._feats, i, self.steps, self.cfg)  # (B, N, D)
        with _blocks_skipped(self.anima), patch(self.anima, {FEATURE: lambda _: h}):
            v = self.anima.velocity(x, sigma, context)
        self.head_only += 1
        return v
