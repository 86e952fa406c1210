"""How strongly does Anima's velocity respond to a vector added at a point of its modulation path?

The proposal's injection-point comparison (docs/proposal.md, "The claims, number by number", claim 3): a projected
pooled text vector is added, scaled by alpha, at one of three points of the time-embedding path, and the velocity
is compared with the unperturbed model's. The three points, as hook names (`anima_probe.probes.hooks`):

    before_norm   t_embedding_norm.input   (B, D)   the raw sinusoid, before the RMSNorm that feeds every block
    after_norm    t_embedding_norm         (B, D)   the RMSNorm output: every block's AdaLN heads and the final layer
    adaln_lora    adaln_lora               (B, 3D)  the shared AdaLN-LoRA term added to every AdaLN head

An RMSNorm is scale-invariant, so a vector added before it can at most rotate the normalised embedding: its effect
should saturate as alpha grows, where the other two points keep growing. The functions here measure that; they
do no I/O and leave no hook behind (`hooks.patch` removes its hook in `finally`).
"""

from __future__ import annotations

import torch

from anima_probe.probes.hooks import add_vector, capture, patch

INJECTION_POINTS: dict[str, str] = {
    "before_norm": "t_embedding_norm.input",
    "after_norm": "t_embedding_norm",
    "adaln_lora": "adaln_lora",
}


def hook_name(point: str) -> str:
    """Injection point ("after_norm") -> hook point name ("t_embedding_norm"); unknown points are errors."""
    if point not in INJECTION_POINTS:
        raise KeyError(f"unknown injection point {point!r}; known: {sorted(INJECTION_POINTS)}")
    return INJECTION_POINTS[point]


def point_width(anima, point: str) -> int:
    """Width of the activation at `point`: D for the time embedding, 3D for the AdaLN-LoRA term."""
    hidden = anima.dit_config.hidden
    return 3 * hidden if hook_name(point) == "adaln_lora" else hidden


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian projection (in_dim, out_dim), entries N(0, 1/in_dim): unit-RMS inputs map to ~unit RMS."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=gen) / in_dim**0.5  # (Din, Dout)


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def rescale_to_rms(vectors: torch.Tensor, target: float) -> torch.Tensor:
    """One scalar for the whole set, so the differences between prompts are kept. (N, D) -> (N, D)."""
    current = rms(vectors)
    return vectors * (target / current) if current > 0 else vectors


@torch.no_grad()
def base_velocity(anima, x_t: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor,
                  points: tuple[str, ...] = tuple(INJECTION_POINTS)) -> tuple[torch.Tensor, dict[str, float]]:
    """Unperturbed velocity (B, C, H, W) in fp32, and the RMS of the activation at each injection point."""
    names = [hook_name(p) for p in points]
    with capture(anima, names) as caps:
        v = anima.velocity(x_t, sigma, ctx).float()  # (B, C, H, W)
    return v, {p: rms(caps[n].value) for p, n in zip(points, names)}


@torch.no_grad()
def velocity_mse(anima, point: str, vectors: torch.Tensor, alphas: tuple[float, ...] | list[float],
                 x_t: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor,
                 base: torch.Tensor | None = None) -> list[float]:
    """Mean squared velocity change when alpha * vectors is added at `point`, one value per alpha.

    vectors (B, Dp) with Dp = point_width(anima, point): row b is added to sample b. x_t (B, C, H, W), sigma (B,),
    ctx (B, 512, Dt). `base` is the unperturbed velocity (B, C, H, W), computed when not given.
    """
    name = hook_name(point)
    width = point_width(anima, point)
    if vectors.ndim != 2 or vectors.shape != (x_t.shape[0], width):
        raise ValueError(f"{point}: vectors must be (B={x_t.shape[0]}, {width}), got {tuple(vectors.shape)}")
    if base is None:
        base = anima.velocity(x_t, sigma, ctx).float()  # (B, C, H, W)
    out = []
    for alpha in alphas:
        with patch(anima, {name: add_vector(vectors, float(alpha))}):
            v = anima.velocity(x_t, sigma, ctx).float()  # (B, C, H, W)
        out.append(float((v - base).pow(2).mean()))
    return out


def growth(mse_by_alpha: dict[float, float], low: float, high: float) -> float:
    """MSE(high) / MSE(low): 4.0 for a doubling means quadratic (linear response), less means saturation.

    A point with no response at all (both zero, e.g. a zero projection) has growth 0 rather than 0/0.
    """
    lo, hi = mse_by_alpha[low], mse_by_alpha[high]
    return hi / lo if lo > 0 else 0.0
