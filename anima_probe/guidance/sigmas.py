"""Which noise levels does a sampler visit? The sigma schedules Anima users pick in ComfyUI, in the flow convention.

Every schedule returns ``steps + 1`` float32 sigmas, strictly decreasing from exactly 1 to exactly 0 (the samplers'
contract, ``samplers._check_sigmas``). Each is written from its public definition as our own code; where a
definition is stated for another parametrisation, the docstring says how it was carried over to flow sigmas.

The flow model's sampling table, as ComfyUI builds it for a shifted flow model (the definitions below refer to it):
1000 timesteps ``t_k = k/1000`` (k = 1..1000), ``sigma_k = shift(t_k)``, so ``sigma_max = 1`` and
``sigma_min = shift(1/1000)`` (0.002994 at Anima's shift 3); its "timestep" of a sigma is the sigma itself
(x 1000), not the un-shifted t. ``simple`` and ``beta`` here are the continuous forms of the table look-ups
(as ``samplers.simple_sigmas`` already is for ``simple``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy import stats

from anima_probe.guidance.samplers import simple_sigmas
from anima_probe.model.flow import DEFAULT_SHIFT, shift_sigma

TABLE_STEPS = 1000  # the sampling table's length (see the module docstring)


def _finish(sigmas: list[float] | torch.Tensor) -> torch.Tensor:
    """(steps+1,) float32 with the exact endpoints 1 and 0 that rounding may have moved."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).clone()
    s[0], s[-1] = 1.0, 0.0
    return s.to(torch.float32)


def _check(steps: int, name: str) -> None:
    if steps < 1:
        raise ValueError(f"{name}: steps must be >= 1, got {steps}")


def flow_sigma_min(shift: float = DEFAULT_SHIFT) -> float:
    """The table's smallest non-zero sigma, shift(1/1000): where karras / exponential / sgm_uniform stop."""
    return float(shift_sigma(1.0 / TABLE_STEPS, shift))


def sgm_uniform_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """ComfyUI's ``sgm_uniform`` (its ``normal`` scheduler with ``sgm=True``): ``steps + 1`` timesteps spaced
    uniformly from the timestep of sigma_max to that of sigma_min, the last dropped, each mapped through the table's
    sigma(t), then 0. For a flow model the timestep of sigma is sigma itself, so the uniform grid runs over
    [sigma_min, 1] in *t* and is then shifted: ``sigma_i = shift(1 - i (1 - sigma_min) / steps)``."""
    _check(steps, "sgm_uniform_sigmas")
    t = torch.linspace(1.0, flow_sigma_min(shift), steps + 1, dtype=torch.float64)[:-1]  # (steps,)
    return _finish(torch.cat([shift_sigma(t, shift), torch.zeros(1, dtype=torch.float64)]))


def karras_sigmas(steps: int, shift: float = DEFAULT_SHIFT, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5, as k-diffusion's ``get_sigmas_karras``: ``steps`` points
    ``(s_max^(1/rho) + r (s_min^(1/rho) - s_max^(1/rho)))^rho`` for r uniform in [0, 1], then 0.

    Adapted: the formula is stated for VE sigmas; ComfyUI feeds it the flow model's own sigma_min / sigma_max
    (shift(1/1000) and 1) and uses the result as flow sigmas directly, which is what users run, so we do the same.
    The shift enters only through sigma_min."""
    _check(steps, "karras_sigmas")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)  # (steps,)
    lo, hi = flow_sigma_min(shift) ** (1 / rho), 1.0
    return _finish(torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)]))


def exponential_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_exponential``: ``steps`` sigmas uniform in log sigma from sigma_max to sigma_min,
    then 0. Adapted as ``karras_sigmas`` is: the flow model's sigma range, used as flow sigmas."""
    _check(steps, "exponential_sigmas")
    logs = torch.linspace(0.0, math.log(flow_sigma_min(shift)), steps, dtype=torch.float64)  # (steps,)
    return _finish(torch.cat([logs.exp(), torch.zeros(1, dtype=torch.float64)]))


def beta_sigmas(steps: int, shift: float = DEFAULT_SHIFT, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """ComfyUI's ``beta`` scheduler (after Lee et al. 2024, arXiv 2407.12173): timesteps at the Beta(alpha, beta)
    quantiles of ``1 - i/steps`` (i = 0..steps-1), mapped through the sigma table, then 0.

    Continuous form: ComfyUI rounds each quantile to one of the 1000 table entries and drops repeats (so it can
    return fewer steps); we use the quantile itself, ``sigma_i = shift(F^-1(1 - i/steps))``, as ``simple_sigmas``
    does for ``simple``. With alpha = beta = 1 this is exactly ``simple``."""
    _check(steps, "beta_sigmas")
    q = 1.0 - torch.arange(steps, dtype=torch.float64) / steps  # (steps,) from 1 down
    t = torch.as_tensor(stats.beta.ppf(q.numpy(), alpha, beta), dtype=torch.float64)
    return _finish(torch.cat([shift_sigma(t, shift), torch.zeros(1, dtype=torch.float64)]))


def _arctan_stage(count: int, slope: float, pivot: float, start: float, end: float) -> list[float]:
    """``count`` points of a falling arctan, rescaled so the first is ``start`` and the last ``end``."""
    def f(x: float) -> float:
        return ((2 / math.pi) * math.atan(-slope * (x - pivot)) + 1) / 2
    top, bottom = f(0), f(count - 1)
    return [(f(x) - bottom) / (top - bottom) * (start - end) + end for x in range(count)]


def bong_tangent_sigmas(steps: int, shift: float = DEFAULT_SHIFT, middle: float = 0.5, pivot: float = 0.6,
                        slope: float = 0.2) -> torch.Tensor:
    """RES4LYF's ``bong_tangent`` (ClownsharkBatwing's node pack, ``sigmas.py``), at its defaults: two arctan stages,
    1 -> ``middle`` then ``middle`` -> 0, over ``n = steps + 2`` points split at ``int(n * pivot)``; each stage
    pivots at that split (the second at 0, its own start) with slope ``slope * 40 / n``; the first stage's last
    point is dropped, leaving ``steps + 1`` sigmas.

    Inferred: RES4LYF has separate pivots and slopes per stage (default equal) and returns this shape as a share
    of noise; for a flow model the share *is* sigma, so no shift is applied (``shift`` is accepted and ignored, so
    every schedule has one signature)."""
    _check(steps, "bong_tangent_sigmas")
    if steps < 2:
        raise ValueError(f"bong_tangent_sigmas: needs steps >= 2 (two stages), got {steps}")
    n = steps + 2
    split, s = int(n * pivot), slope / (n / 40)
    first = _arctan_stage(split, s, split, 1.0, middle)[:-1]
    second = _arctan_stage(n - split, s, 0, middle, 0.0)
    return _finish(first + second)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "simple": simple_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "beta": beta_sigmas,
    "bong_tangent": bong_tangent_sigmas,
}


def schedule_sigmas(name: str, steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The named schedule's (steps+1,) flow sigmas; unknown names fail with the known ones listed."""
    if name not in SCHEDULES:
        raise KeyError(f"unknown sigma schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](steps, shift)
