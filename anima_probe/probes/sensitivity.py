"""How strongly does Anima's velocity respond to a vector added at a point of its modulation path?

The proposal's injection-point comparison (docs/proposal.md, "The claims, number by number", claim 3): a projected
pooled text vector is added, scaled by alpha, at one point of the time-embedding path, and the velocity is compared
with the unperturbed model's. The points, as hook names (`anima_probe.probes.hooks`) or block arguments:

    before_norm        t_embedding_norm.input   (B, D)   the raw sinusoid, before the RMSNorm that feeds every block
    after_norm         t_embedding_norm         (B, D)   the RMSNorm output: every block's AdaLN heads and the final layer
    adaln_lora         adaln_lora               (B, 3D)  the AdaLN-LoRA term: every block AND the final norm_out, which
                                                         reads temb[..., :2D] (what a hook on t_embedder's output does)
    adaln_lora_blocks  every block's temb       (B, 3D)  the same term per block only, final layer untouched: the
                                                         official Cosmos injection (`guidance.modulation.inject`)

An RMSNorm is scale-invariant, so a vector added before it can at most rotate the normalised embedding: its effect
should saturate as alpha grows, where the other points keep growing. The functions here measure that per batch row
(rows are (prompt, noise draw) pairs, so the caller can resample prompts as clusters); they do no I/O and leave no
hook behind (`hooks.patch` and `modulation.inject` remove theirs in `finally`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from anima_probe.errors import UnknownNameError
from anima_probe.guidance.families import COSMOS
from anima_probe.guidance.modulation import Modulation, inject
from anima_probe.probes.hooks import add_vector, capture, patch
from anima_probe.probes.stats import cluster_bca, holm, null_summary, swap_null

# point -> the hook point whose activation it perturbs (and whose RMS the RMS-matched vectors take)
INJECTION_POINTS: dict[str, str] = {
    "before_norm": "t_embedding_norm.input",
    "after_norm": "t_embedding_norm",
    "adaln_lora": "adaln_lora",
    "adaln_lora_blocks": "adaln_lora",
}
BLOCKS_ONLY = "adaln_lora_blocks"


def hook_name(point: str) -> str:
    """Injection point ("after_norm") -> hook point name ("t_embedding_norm"); unknown points are errors."""
    if point not in INJECTION_POINTS:
        raise UnknownNameError(f"unknown injection point {point!r}; known: {sorted(INJECTION_POINTS)}")
    return INJECTION_POINTS[point]


def point_width(anima, point: str) -> int:
    """Width of the activation at `point`: D for the time embedding, 3D for the AdaLN-LoRA term."""
    hidden = anima.dit_config.hidden
    return 3 * hidden if hook_name(point) == "adaln_lora" else hidden


def injected(anima, point: str, vectors: torch.Tensor, alpha: float) -> contextlib.AbstractContextManager:
    """The model with alpha * vectors (B, width) added at `point` while the context is open."""
    if point == BLOCKS_ONLY:  # the block argument, not the module output: norm_out keeps the plain temb
        return inject(anima, Modulation(COSMOS, (alpha * vectors,) * anima.num_blocks))
    return patch(anima, {hook_name(point): add_vector(vectors, float(alpha))})


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
                 base: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity change per batch row when alpha * vectors is added at `point`: (A, B), one row per alpha.

    vectors (B, Dp) with Dp = point_width(anima, point): row b is added to sample b. x_t (B, C, H, W), sigma (B,),
    ctx (B, 512, Dt). `base` is the unperturbed velocity (B, C, H, W), computed when not given.
    """
    width = point_width(anima, point)
    if vectors.ndim != 2 or vectors.shape != (x_t.shape[0], width):
        raise ValueError(f"{point}: vectors must be (B={x_t.shape[0]}, {width}), got {tuple(vectors.shape)}")
    if base is None:
        base = anima.velocity(x_t, sigma, ctx).float()  # (B, C, H, W)
    out = []
    for alpha in alphas:
        with injected(anima, point, vectors, float(alpha)):
            v = anima.velocity(x_t, sigma, ctx).float()  # (B, C, H, W)
        out.append((v - base).pow(2).flatten(1).mean(1))  # (B,)
    return torch.stack(out)  # (A, B)


def ratio(num, den) -> np.ndarray:
    """num / den elementwise, 0 where den is 0: a point with no response at all (a zero projection) has growth 0
    rather than 0/0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def prompt_means(mse: np.ndarray, n_prompts: int) -> np.ndarray:
    """(..., S, B) per-row MSEs over S sigmas, rows prompt-major (B = prompts x noise draws) -> (..., P) per-prompt
    means: a prompt's noise draws and sigmas are one cluster, so they are averaged before prompts are resampled."""
    *lead, n_sigma, rows = mse.shape
    if rows % n_prompts:
        raise ValueError(f"{rows} rows do not split into {n_prompts} prompts")
    return mse.reshape(*lead, n_sigma, n_prompts, rows // n_prompts).mean(axis=(-3, -1))


def contrast(a: np.ndarray, b: np.ndarray, statistic: Callable, n_boot: int = 2000, seed: int = 0
             ) -> dict[str, float]:
    """A statistic comparing two points from their per-prompt columns a, b (P, m), e.g. (MSE at alpha 4, at 8):
    its value, a BCa interval over prompts, and where it sits in the exact swap null (the two points exchanged
    within prompts, every pattern; `stats.swap_null`): null quantiles, p and the minimum detectable effect.
    `statistic(a_cols, b_cols)` takes tuples of (..., P) columns."""
    m = a.shape[1]
    ci = cluster_bca((*a.T, *b.T), lambda *cols, axis=-1: statistic(cols[:m], cols[m:]), n_boot=n_boot, seed=seed)
    null = swap_null(a, b, lambda x, y: float(statistic(tuple(x.T), tuple(y.T))))
    return {"value": ci.value, "ci_low": ci.low, "ci_high": ci.high, **null_summary(ci.value, null, exact=True)}


def after_vs_before(a: tuple, b: tuple) -> np.ndarray:
    """MSE(point a) / MSE(point b) at one alpha: the proposal's "after norm is ~10x more sensitive"."""
    return ratio(a[0].mean(-1), b[0].mean(-1))


def growth_vs(a: tuple, b: tuple) -> np.ndarray:
    """growth(a) / growth(b), growth = MSE(8) / MSE(4): the proposal's "more dynamic range than adaln_lora"."""
    return ratio(ratio(a[1].mean(-1), a[0].mean(-1)), ratio(b[1].mean(-1), b[0].mean(-1)))


# The proposal's two comparisons: (point a, point b, the alphas whose per-prompt MSEs they read, the statistic)
TESTS = {"after_vs_before_a2": ("after_norm", "before_norm", (2.0,), after_vs_before),
         "growth_after_vs_adaln_lora": ("after_norm", "adaln_lora", (4.0, 8.0), growth_vs),
         "growth_after_vs_adaln_lora_blocks": ("after_norm", "adaln_lora_blocks", (4.0, 8.0), growth_vs)}


def curve_metrics(means: dict[tuple[str, str], np.ndarray], alphas: Sequence[float], n_boot: int, seed: int
                  ) -> tuple[dict[str, float], list[tuple]]:
    """From per-prompt means {(prefix, point): (A, P)}: the mean MSE at every alpha and the growth 4 -> 8, each
    with its BCa interval over prompts (keys ``{prefix}mse/{point}/alpha_{a}``, ``..._ci_low``, ``..._ci_high``),
    and the curve rows (prefix, point, alpha, value, low, high)."""
    metrics, rows, at = {}, [], {float(a): i for i, a in enumerate(alphas)}
    for (prefix, p), m in means.items():
        for a, i in at.items():
            ci = cluster_bca((m[i],), lambda x, axis=-1: x.mean(axis), n_boot=n_boot, seed=seed)
            metrics |= {f"{prefix}mse/{p}/alpha_{a:g}": ci.value, f"{prefix}mse_ci_low/{p}/alpha_{a:g}": ci.low,
                        f"{prefix}mse_ci_high/{p}/alpha_{a:g}": ci.high}
            rows.append((prefix, p, a, ci.value, ci.low, ci.high))
        if {4.0, 8.0} <= set(at):
            g = cluster_bca((m[at[4.0]], m[at[8.0]]), lambda lo, hi, axis=-1: ratio(hi.mean(axis), lo.mean(axis)),
                            n_boot=n_boot, seed=seed)
            metrics |= {f"{prefix}growth_4_to_8/{p}": g.value, f"{prefix}growth_ci_low/{p}": g.low,
                        f"{prefix}growth_ci_high/{p}": g.high}
    return metrics, rows


def proposal_tests(means: dict[tuple[str, str], np.ndarray], alphas: Sequence[float], n_boot: int, seed: int
                   ) -> dict[str, float]:
    """Every `TESTS` comparison the alpha grid allows, in every way (metric prefix) of `means`: value, BCa interval,
    swap-null quantiles, p, p_holm (Holm over all of them) and mde, as ``{prefix}{test}/{stat}``."""
    at = {float(a): i for i, a in enumerate(alphas)}
    out = {}
    for prefix in dict.fromkeys(prefix for prefix, _ in means):
        for name, (pa, pb, reads, statistic) in TESTS.items():
            if set(reads) <= set(at):
                cols = [np.stack([means[prefix, q][at[a]] for a in reads], 1) for q in (pa, pb)]  # (P, m) each
                out[f"{prefix}{name}"] = contrast(*cols, statistic, n_boot=n_boot, seed=seed)
    adjusted = holm([t["p"] for t in out.values()]) if out else []
    return {f"{key}/{k}": v for (key, t), p_adj in zip(out.items(), adjusted, strict=True)
            for k, v in {**t, "p_holm": float(p_adj)}.items()}
