"""Samplers over Anima's flow velocity: which trajectories do the guidance probes actually run?

Every probe that generates an image goes through one of these small pure functions (after the shape of
k-diffusion's ``sampling.py``: one signature, a tqdm bar, a callback dict per step), so a result can name
its sampler and schedule exactly and be re-run bit for bit. Each marks its steps (``hooks.sampler_step``), so a
hook capture during sampling knows the step of every value it records.

Conventions (docs/anima.md, "Flow-matching conventions"): ``x_t = sigma*noise + (1-sigma)*x0``; the model predicts
the velocity ``v ~ noise - x0``; the denoised estimate is ``x0 = x_t - sigma*v``; ``sigma`` in [0, 1] is fed to the
model directly. Denoiser contract: ``velocity_fn(x, sigma: (B,) float32 tensor) -> v`` with ``v.shape == x.shape``.

ER-SDE (Cui et al. 2023) in the flow parametrisation -- derivation
------------------------------------------------------------------
Flow matching is a VP-type process with ``alpha = 1 - sigma``. Dividing by alpha gives the VE variable
``x~ = x/(1-sigma) = x0 + lam*noise`` with ``lam = sigma/(1-sigma)`` (the paper's lambda = sigma_t/alpha_t). The
paper's exact solution of the Extended Reverse-Time SDE from ``lam_s`` to ``lam_t < lam_s`` with noise-scale
function ``phi`` and data prediction ``D(lam)`` is

    x~_t = r x~_s + phi(lam_t) * Int_{lam_t}^{lam_s} phi'(l)/phi(l)^2 D(l) dl + sqrt(lam_t^2 - lam_s^2 r^2) z,

with ``r = phi(lam_t)/phi(lam_s)``. ER-SDE-Solver-3 expands ``D(l) ~ D0 + (l-lam_s) D1 + (l-lam_s)^2/2 D2`` and
integrates by parts, giving the weights ``1 - r``, ``(lam_t - lam_s) + phi(lam_t) S1`` and
``(lam_t - lam_s)^2/2 + phi(lam_t) S2`` with ``S1 = Int dl/phi`` and ``S2 = Int (l-lam_s)/phi dl`` (both over
[lam_t, lam_s]; the paper evaluates them numerically). D1 and D2 are the paper's backward differences of past
data predictions in lam. Multiplying back by ``1 - sigma_t`` and writing ``g = phi(lam)/lam`` and
``rho = g(lam_t)/g(lam_s)`` turns the singular-looking factors into bounded ones:

    x_t = (sigma_t/sigma_s) rho x_s + [(1-sigma_t) - rho sigma_t (1-sigma_s)/sigma_s] D0
          + (1-sigma_t) [..D1..] + (1-sigma_t) [..D2..] + sigma_t sqrt(1 - rho^2) z.

So the deterministic limit (``phi(lam) = lam``, i.e. ``g = 1``, ``rho = 1``) of the first-order step is exactly
the flow Euler step ``x_t = x_s + (sigma_t - sigma_s) v`` (a test checks this). ``s_noise = 0`` alone is *not*
that limit: it drops the noise but keeps the SDE's contracting drift, so it loses variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import trange

from anima_probe.model.flow import DEFAULT_SHIFT, shift_sigma  # one definition of the schedule
from anima_probe.probes.hooks import sampler_step

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseScaler = Callable[[torch.Tensor], torch.Tensor]

# sigma = 1 means lam = inf (alpha = 0). phi is evaluated there at this stand-in sigma: at lam ~ 1e7 the default
# scaler gives rho < 1e-50 (a complete re-noise, the true limit) and the ODE scaler gives rho = 1 exactly.
_SIGMA_ONE_STANDIN = 1.0 - 1e-7
_QUAD_POINTS = 32  # Gauss-Legendre nodes in log(lam) for S1, S2; the integrands there are smooth and bounded


def simple_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """(steps+1,) float32 sigmas: uniform t from 1 to 0, shifted; first exactly 1, last exactly 0.

    The continuous form of ComfyUI's ``simple`` scheduler (which samples a 1000-entry table instead).
    """
    if steps < 1:
        raise ValueError(f"simple_sigmas: steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"simple_sigmas: shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # (steps+1,)
    sigmas = shift_sigma(t, shift)
    sigmas[0], sigmas[-1] = 1.0, 0.0  # exact endpoints, whatever the rounding of the shift formula
    return sigmas.to(torch.float32)


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError(f"sigmas must lie in [0, 1] (flow convention), got range [{s.min():.4g}, {s.max():.4g}]")
    if not (s[1:] < s[:-1]).all():
        bad = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(f"sigmas must be strictly decreasing; sigmas[{bad}]={s[bad]:.6g} <= sigmas[{bad + 1}]")
    return s.tolist()


def _sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)  # (B,)


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, x: torch.Tensor, sigmas, callback=None, disable: bool | None = None):
    """Flow Euler: x <- x + (sigma_next - sigma) * v. Returns the final x (the x0 estimate when sigmas end at 0).

    ``callback({"i", "sigma", "sigma_next", "x", "denoised"})`` is called once per step before the update.
    """
    sig = _check_sigmas(sigmas)
    for i in trange(len(sig) - 1, disable=disable):
        s, t = sig[i], sig[i + 1]
        with sampler_step(i):  # hook captures inside carry the step
            v = velocity_fn(x, _sigma_batch(s, x))  # (B, ...)
        denoised = x - s * v
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": t, "x": x, "denoised": denoised})
        x = x + (t - s) * v
    return x


def default_noise_scaler(lam: torch.Tensor) -> torch.Tensor:
    """The paper's recommended noise-scale function (its "SDE_5"): phi(lam) = lam * (exp(lam^0.3) + 10)."""
    return lam * (torch.exp(lam**0.3) + 10.0)


def ode_noise_scaler(lam: torch.Tensor) -> torch.Tensor:
    """phi(lam) = lam: the ER SDE's deterministic limit (the probability-flow ODE); ER-SDE-1 is then flow Euler."""
    return lam


def _lam(sigma: float) -> float:
    sigma = min(sigma, _SIGMA_ONE_STANDIN)
    return sigma / (1.0 - sigma)


def _g(phi: NoiseScaler, lam: torch.Tensor) -> torch.Tensor:
    return phi(lam) / lam  # g = phi/lam; g is 1 for the ODE and grows with lam for the SDE scalers


def er_sde_coefficients(sigma: float, sigma_next: float, noise_scaler: NoiseScaler = default_noise_scaler):
    """Coefficients ``(c_x, c_d0, c_d1, c_d2, c_noise)`` of one ER-SDE step sigma -> sigma_next (> 0), in x space.

    ``x_next = c_x x + c_d0 D0 + c_d1 D1 + c_d2 D2 + c_noise z`` (see the module docstring for the derivation).
    """
    if not 0.0 < sigma_next < sigma <= 1.0:
        raise ValueError(f"er_sde_coefficients needs 0 < sigma_next < sigma <= 1, got {sigma_next}, {sigma}")
    lam_s, lam_t = _lam(sigma), _lam(sigma_next)
    lam = torch.tensor([lam_t, lam_s], dtype=torch.float64)
    g_t, g_s = _g(noise_scaler, lam).tolist()
    rho = g_t / g_s if math.isfinite(g_s) else 0.0
    if not 0.0 <= rho <= 1.0 + 1e-12:
        raise ValueError(f"noise scaler must make phi(lam)/lam non-decreasing; got rho={rho} at sigma={sigma}")
    rho = min(rho, 1.0)
    phi_t = lam_t * g_t
    nodes, weights = np.polynomial.legendre.leggauss(_QUAD_POINTS)
    a, b = math.log(lam_t), math.log(lam_s)
    u = torch.as_tensor(0.5 * (b - a) * nodes + 0.5 * (b + a))  # (Q,) log-lam nodes
    lam_u = u.exp()
    wq = torch.as_tensor(0.5 * (b - a) * weights)  # dl/phi = du / g(lam)
    inv_g = 1.0 / _g(noise_scaler, lam_u)
    s1 = float((wq * inv_g).sum())
    s2 = float((wq * (lam_u - lam_s) * inv_g).sum())
    alpha_t = 1.0 - sigma_next
    c_x = sigma_next / sigma * rho
    c_d0 = alpha_t - rho * sigma_next * (1.0 - sigma) / sigma
    c_d1 = alpha_t * ((lam_t - lam_s) + phi_t * s1)
    c_d2 = alpha_t * ((lam_t - lam_s) ** 2 / 2 + phi_t * s2)
    c_noise = sigma_next * math.sqrt(max(0.0, 1.0 - rho * rho))
    return c_x, c_d0, c_d1, c_d2, c_noise


def _taylor_terms(lams: list[float], ds: list[torch.Tensor], order: int):
    """The paper's estimates of D1, D2 at the newest point from the last <= 3 (lam, D) pairs (None if unused)."""
    d1 = d2 = None
    if order >= 2 and len(ds) >= 2:
        d1 = (ds[-1] - ds[-2]) / (lams[-1] - lams[-2])
    if order >= 3 and len(ds) >= 3:
        d1_prev = (ds[-2] - ds[-3]) / (lams[-2] - lams[-3])
        d2 = 2 * (d1 - d1_prev) / (lams[-1] - lams[-3])
    return d1, d2


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # float32 on the generator's device, so a given seed gives the same noise whatever x's dtype or device
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device).to(x)


def _denoised(velocity_fn: VelocityFn, x: torch.Tensor, i: int, s: float, t: float, callback) -> torch.Tensor:
    """The data prediction x - s v at step i (hook captures inside carry the step), reported to ``callback``; the
    prologue every multistep / stochastic sampler here shares."""
    with sampler_step(i):
        denoised = x - s * velocity_fn(x, _sigma_batch(s, x))  # (B, ...)
    if callback is not None:
        callback({"i": i, "sigma": s, "sigma_next": t, "x": x, "denoised": denoised})
    return denoised


@torch.no_grad()
def sample_er_sde(velocity_fn: VelocityFn, x: torch.Tensor, sigmas, generator: torch.Generator | None = None,
                  callback=None, disable: bool | None = None, s_noise: float = 1.0,
                  noise_scaler: NoiseScaler = default_noise_scaler, order: int = 3) -> torch.Tensor:
    """ER-SDE-Solver (default: order 3 with the paper's noise scaler) in Anima's flow parametrisation.

    Cui, Zhang, Lu, Liao, "Elucidating the Solution Space of Extended Reverse-Time SDE for Diffusion Models",
    arXiv:2309.06169 (2023). Written from the paper's equations (module docstring); no other code copied.
    Orders ramp up 1 -> 2 -> 3 as data predictions accumulate; a point at sigma = 1 (lam = inf) never enters the
    differences; the step onto sigma = 0 returns the data prediction (lam = 0 makes every weight but D0's vanish).
    ``noise_scaler=ode_noise_scaler`` is the deterministic limit; ``s_noise`` scales the injected noise only.
    Deterministic for a given ``generator``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"sample_er_sde: order must be 1, 2 or 3, got {order}")
    sig = _check_sigmas(sigmas)
    lams: list[float] = []
    ds: list[torch.Tensor] = []
    for i in trange(len(sig) - 1, disable=disable):
        s, t = sig[i], sig[i + 1]
        denoised = _denoised(velocity_fn, x, i, s, t, callback)  # (B, ...)
        if t == 0.0:
            x = denoised
            continue
        if s < 1.0:
            lams, ds = (lams + [_lam(s)])[-3:], (ds + [denoised])[-3:]
        c_x, c_d0, c_d1, c_d2, c_noise = er_sde_coefficients(s, t, noise_scaler)
        d1, d2 = _taylor_terms(lams, ds, order)
        x = c_x * x + c_d0 * denoised
        if d1 is not None:
            x = x + c_d1 * d1
        if d2 is not None:
            x = x + c_d2 * d2
        if c_noise > 0.0 and s_noise != 0.0:
            x = x + (s_noise * c_noise) * _randn_like(x, generator)
    return x


def _ve_lam(sigma: float) -> float:
    """lam = sigma / (1 - sigma), the VE noise level of x/(1 - sigma); infinite at sigma = 1 (pure noise)."""
    return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)


def ancestral_coefficients(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float, float]:
    """``(c_x, c_d, c_noise)`` of one Euler-ancestral step sigma -> sigma_next (> 0): x' = c_x x + c_d D + c_noise z.

    k-diffusion's ``get_ancestral_step`` splits the VE step lam_s -> lam_t into a deterministic step down to lam_down
    and fresh noise lam_up, with lam_up = min(lam_t, eta lam_t sqrt(1 - lam_t^2/lam_s^2)) and
    lam_down^2 + lam_up^2 = lam_t^2 (so the marginal noise level is exact). Adapted: we apply that split to the VE
    variable x/(1 - sigma), lam = sigma/(1 - sigma), and multiply back by 1 - sigma_next; eta = 0 is then exactly the
    flow Euler step. (ComfyUI's flow variant parametrises eta differently, as a linear shrink of the down-step; the
    two agree at eta = 0 and both re-noise fully at eta = 1 from sigma = 1.)"""
    if not 0.0 < sigma_next < sigma <= 1.0:
        raise ValueError(f"ancestral_coefficients needs 0 < sigma_next < sigma <= 1, got {sigma_next}, {sigma}")
    lam_t = _ve_lam(sigma_next)
    q = lam_t / _ve_lam(sigma)  # 0 from sigma = 1
    lam_up = min(lam_t, eta * lam_t * math.sqrt(max(0.0, 1.0 - q * q)))
    lam_down = math.sqrt(max(0.0, lam_t * lam_t - lam_up * lam_up))
    alpha_t = 1.0 - sigma_next
    return alpha_t * lam_down / sigma, alpha_t * (1.0 - q * lam_down / lam_t), alpha_t * lam_up


@torch.no_grad()
def sample_euler_ancestral(velocity_fn: VelocityFn, x: torch.Tensor, sigmas, generator: torch.Generator | None = None,
                           callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``) in the flow parametrisation: a deterministic step
    to a lower noise level, then fresh noise back up to sigma_next (``ancestral_coefficients``). The step onto
    sigma = 0 returns the data prediction. eta = 0 is flow Euler. Deterministic for a given ``generator``."""
    sig = _check_sigmas(sigmas)
    for i in trange(len(sig) - 1, disable=disable):
        s, t = sig[i], sig[i + 1]
        denoised = _denoised(velocity_fn, x, i, s, t, callback)  # (B, ...)
        if t == 0.0:
            x = denoised
            continue
        c_x, c_d, c_noise = ancestral_coefficients(s, t, eta)
        x = c_x * x + c_d * denoised
        if c_noise > 0.0 and s_noise != 0.0:
            x = x + (s_noise * c_noise) * _randn_like(x, generator)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(velocity_fn: VelocityFn, x: torch.Tensor, sigmas, generator: torch.Generator | None = None,
                        callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2M) SDE, midpoint form (Lu et al. 2022, arXiv 2211.01095; k-diffusion's ``sample_dpmpp_2m_sde``)
    in the flow parametrisation.

    With lam = sigma/(1 - sigma) and h = log(lam_s / lam_t) (the step in half-log-SNR), the data-prediction step is
    ``x_t = (sigma_t/sigma_s) e^(-eta h) x_s + (1 - sigma_t)(1 - e^(-(1+eta) h)) (D + (D - D_prev) / (2 r))
    + sigma_t sqrt(1 - e^(-2 eta h)) z`` with r = h_prev / h: k-diffusion's VE formulas applied to x/(1 - sigma) and
    multiplied back by 1 - sigma_t. eta = 0 is the deterministic DPM-Solver++(2M), whose first step is flow Euler.
    Inferred/adapted: a step from sigma = 1 has h = inf, so it takes no second-order term and is not used as
    history (as in ``sample_er_sde``); the noise is independent per step from ``generator`` (k-diffusion draws it
    from a Brownian tree, which only matters when comparing step counts on one noise path)."""
    sig = _check_sigmas(sigmas)
    d_prev, h_prev = None, None
    for i in trange(len(sig) - 1, disable=disable):
        s, t = sig[i], sig[i + 1]
        denoised = _denoised(velocity_fn, x, i, s, t, callback)  # (B, ...)
        if t == 0.0:
            x = denoised
            continue
        h = math.log(_ve_lam(s) / _ve_lam(t))  # inf from sigma = 1
        eta_h = eta * h if eta else 0.0
        decay = math.exp(-h - eta_h)
        x = (t / s) * math.exp(-eta_h) * x + (1.0 - t) * (1.0 - decay) * denoised
        if d_prev is not None and math.isfinite(h):
            x = x + (1.0 - t) * (1.0 - decay) * (h / h_prev) * 0.5 * (denoised - d_prev)
        if eta and s_noise:
            x = x + (s_noise * t * math.sqrt(max(0.0, -math.expm1(-2.0 * eta_h)))) * _randn_like(x, generator)
        d_prev, h_prev = (denoised, h) if math.isfinite(h) else (None, None)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "er_sde": sample_er_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}
STOCHASTIC = frozenset({"euler_ancestral", "er_sde", "dpmpp_2m_sde"})  # these take a generator


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, ComfyUI/diffusers convention: ``v_uncond + scale*(v_cond - v_uncond)``.

    scale 1 = no guidance (the conditional prediction). The official Cosmos mod-guidance sampler combines data
    predictions as ``x0_c + cfg*(x0_c - x0_u)``; since ``x0 = x - sigma*v`` is affine in v with the same x and
    sigma for both rows, that equals this function with ``scale = 1 + cfg`` (see ``official_cfg_to_scale``).
    """
    return v_uncond + scale * (v_cond - v_uncond)


def official_cfg_to_scale(cfg: float) -> float:
    """The official Cosmos sampler's ``cfg`` as a ComfyUI/diffusers guidance scale: 1 + cfg."""
    return 1.0 + cfg


def cfg_velocity(model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], cond: torch.Tensor,
                 uncond: torch.Tensor | None, scale: float | Sequence[float] = 1.0) -> VelocityFn:
    """The one CFG velocity wrapper: ``velocity(x, sigma)`` over ``model(x, sigma, context)`` (``anima.velocity``).

    ``cond`` / ``uncond`` are the (B, L, Dt) contexts of the B rows. ``scale`` is one CFG scale, or one per cell for
    K cells side by side (x is then (K*B, ...), cell k's rows k*B..k*B+B-1). With CFG the model runs ONCE per step
    on [cond; uncond] rows of every cell, combined by ``cfg_combine``; at scale 1 everywhere only the cond rows run.
    The samplers give every row the same sigma, so the model gets ``sigma[:1]`` (one timestep embedding).
    """
    scales = [float(scale)] if isinstance(scale, int | float) else [float(s) for s in scale]
    K, B = len(scales), cond.shape[0]
    if all(s == 1.0 for s in scales):
        ctx = cond.repeat(K, 1, 1)  # (K*B, L, Dt)
        return lambda x, sigma: model(x, sigma[:1], ctx)
    if uncond is None:
        raise ValueError(f"CFG scales {scales} need the uncond context")
    ctx = torch.cat([cond, uncond]).repeat(K, 1, 1)  # (K*2B, L, Dt): per cell [cond; uncond]
    weight = torch.tensor(scales, device=cond.device)  # (K,)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        x2 = x.view(K, 1, B, *shape).expand(K, 2, B, *shape).reshape(K * 2 * B, *shape)  # (K*2B, C, h, w)
        v = model(x2, sigma[:1], ctx).float().view(K, 2, B, *shape)  # (K, 2, B, C, h, w)
        return cfg_combine(v[:, 0], v[:, 1], weight.view(K, *[1] * (len(shape) + 1))).reshape(K * B, *shape)

    return velocity


def latent_shape(anima, size: int) -> tuple[int, int, int]:
    """(C, h, w) of a size x size image where the DiT samples: h = size / 8 with a VAE, = size in pixel space."""
    side = size // 8 if anima.vae is not None else size
    return anima.dit_config.in_channels, side, side


def initial_noise(anima, batch: int, size: int, seed: int) -> torch.Tensor:
    """The one noise maker: (B, C, h, w) float32 N(0, 1) from a CPU generator (the same seed gives the same noise on
    any device); ``size`` is the image side in pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *latent_shape(anima, size), generator=g)
