"""How much of what a text change does to Anima's velocity could a modulation vector do instead? Per-row fits of a
vector added after ``t_embedding_norm``.

For rows (prompt, noise draw, sigma) with a target velocity change t (the DiT's own response to p+ vs p- in
cross-attention, say), a fit finds the vector delta (one per row, width D) added to what the AdaLN heads read --
every block's ``embedded_timestep`` and the final layer's, i.e. the output of ``t_embedding_norm``, the proposal's
injection point -- that minimises ||f(delta) - t||^2 with f(delta) = v(x; ctx, delta) - v(x; ctx, 0), and reports
R^2 = 1 - ||f(delta) - t||^2 / ||t||^2. A row's ``mask`` (one weight per block and one for the final layer) limits
where delta enters: a block group's fit adds it to that group's blocks only. The vectors go in through
``modulation.inject`` (family ``pooled_text_proj``: the same argument the guided sampler writes), the DiT stays frozen.

The optimiser is nonlinear conjugate gradient (Polak-Ribiere+), run for every row on its own: the gradient of the
row's own normalised loss by backprop, the step along the row's direction from the row's own linearisation (one
finite-difference forward along the direction, then the exact minimiser of that quadratic model). Nothing is shared
between rows, so a row's fit does not depend on what else is in its batch (a joint L-BFGS shares one line search:
a null row would move the statistic's fit). The velocity is far from linear in delta (on the toy model the linear
least-squares vector has norm ~500, 40x the embedding's, and R^2 -1e4 in the real forward), so the fit runs in the
real model, for a number of iterations fixed before the run, and each row keeps its best iterate: R^2 is a lower
bound on what the best vector reaches, and ``Fit.history`` shows how far it was still rising.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anima_probe.errors import InputError
from anima_probe.guidance.families import POOLED_TEXT_PROJ
from anima_probe.guidance.modulation import Modulation, inject
from anima_probe.pipeline.figures import new_figure
from anima_probe.probes.stats import cluster_bca, holm, null_summary, swap_null

_TINY = 1e-30


def block_groups(num_blocks: int) -> dict[str, list[int]]:
    """Early / middle / late blocks: ``np.array_split`` of the block indices into three nearly equal runs (5 ->
    [0, 1], [2, 3], [4]; 28 -> 10, 9, 9); a 2-block model has an early and a late block only."""
    if num_blocks < 2:
        raise InputError(f"a model of {num_blocks} block has no block groups to compare")
    names = ("early", "middle", "late") if num_blocks >= 3 else ("early", "late")
    parts = np.array_split(np.arange(num_blocks), len(names))
    return {name: [int(i) for i in part] for name, part in zip(names, parts, strict=True)}


def masks(num_blocks: int, rows: int, blocks: list[int] | None = None) -> torch.Tensor:
    """(rows, num_blocks + 1) weights: 1 on ``blocks`` (None: every block and the final layer), else 0."""
    m = torch.zeros(rows, num_blocks + 1)
    m[:, list(range(num_blocks + 1)) if blocks is None else blocks] = 1.0
    return m


def masked_modulation(delta: torch.Tensor, mask: torch.Tensor) -> Modulation:
    """Row r adds ``mask[r, i] * delta[r]`` to block i's ``embedded_timestep`` and ``mask[r, -1] * delta[r]`` to the
    final layer's: with a mask of ones, exactly the vector added to the output of ``t_embedding_norm``."""
    m = mask.to(delta)
    n = m.shape[1] - 1
    return Modulation(POOLED_TEXT_PROJ, tuple(delta * m[:, i : i + 1] for i in range(n)), delta * m[:, n:])


def velocity_change(anima, x_t: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor,
                    base: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(delta) = v(x_t; ctx, delta) - base, flattened to (R, O), for vectors delta (R, D) entering per ``mask``."""
    def f(delta: torch.Tensor) -> torch.Tensor:
        with inject(anima, masked_modulation(delta, mask)):
            return (anima.velocity(x_t, sigma, ctx).float() - base).flatten(1)
    return f


@dataclass(frozen=True)
class Fit:
    delta: torch.Tensor  # (R, D) each row's best iterate
    change: torch.Tensor  # (R, O) the velocity change it makes, f(delta)
    r2: torch.Tensor  # (R,) its R^2
    history: torch.Tensor  # (iters + 1, R) R^2 of the iterate after each step (row 0: delta = 0, R^2 = 0)


def r_squared(change: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - ||change - target||^2 / ||target||^2 per row: (R, ...) -> (R,)."""
    t = target.flatten(1).float()
    return 1 - (change.flatten(1).float() - t).pow(2).sum(1) / t.pow(2).sum(1)


def fit(f: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, dim: int, iters: int,
        fd_step: float = 1e-3) -> Fit:
    """Per-row least squares of ``f(delta) ~ target`` over delta (R, dim) from 0 (see the module docstring).
    ``fd_step``: the finite-difference step along a direction, as an RMS per coordinate of delta."""
    t = target.flatten(1).float()  # (R, O)
    tn = t.pow(2).sum(1)  # (R,)
    if bool((tn == 0).any()):
        raise InputError(f"target row {int((tn == 0).nonzero()[0])} is zero: R^2 is undefined for it")
    d = t.new_zeros(len(t), dim)
    best, change, best_r2 = d.clone(), torch.zeros_like(t), torch.full_like(tn, -torch.inf)
    history, p, g_prev = [], None, None
    for k in range(iters + 1):
        dd = d.detach().requires_grad_(k < iters)
        with torch.set_grad_enabled(k < iters):
            out = f(dd)  # (R, O)
        res = out - t
        r2 = 1 - res.detach().pow(2).sum(1) / tn
        history.append(r2)
        better = r2 > best_r2
        best[better], change[better], best_r2 = d[better], out.detach()[better], torch.where(better, r2, best_r2)
        if k == iters:
            break
        (g,) = torch.autograd.grad((res.pow(2).sum(1) / tn).sum(), dd)  # row r's gradient is its own loss's only
        if p is None:
            p = -g
        else:  # Polak-Ribiere+, restarted where the result would not descend
            beta = ((g * (g - g_prev)).sum(1) / g_prev.pow(2).sum(1).clamp_min(_TINY)).clamp_min(0)
            p = -g + beta[:, None] * p
            p = torch.where(((p * g).sum(1) < 0)[:, None], p, -g)
        g_prev = g
        with torch.no_grad():
            norm = p.norm(dim=1, keepdim=True)
            h = torch.where(norm > 0, fd_step * dim**0.5 / norm.clamp_min(_TINY), torch.zeros_like(norm))  # (R, 1)
            jp = (f(d + h * p) - out.detach()) / h.clamp_min(_TINY)  # (R, O) ~ J p
            alpha = -(res.detach() * jp).sum(1) / jp.pow(2).sum(1).clamp_min(_TINY)
            d = d + alpha[:, None] * p
    return Fit(best, change, best_r2, torch.stack(history))


def fit_chunks(make_f: Callable[[slice], Callable], target: torch.Tensor, dim: int, iters: int, chunk: int,
               fd_step: float = 1e-3, progress: bool = False, desc: str = "fit") -> Fit:
    """``fit`` over row chunks of at most ``chunk`` rows (``make_f(rows)`` is f for those rows); the rows are
    independent, so the result is the one-batch fit's up to floating-point rounding."""
    parts = [fit(make_f(slice(i, i + chunk)), target[i : i + chunk], dim, iters, fd_step)
             for i in tqdm(range(0, len(target), chunk), desc=desc, disable=not progress)]
    return Fit(*(torch.cat([getattr(p, k) for p in parts], dim=1 if k == "history" else 0)
                 for k in ("delta", "change", "r2", "history")))


@dataclass(frozen=True)
class Rows:
    """One fit's rows in a sigma's batch: which rows (their x_t and sigma), the context each reads, the velocity
    without delta, the target, and the blocks delta enters (None: every block and the final layer)."""

    index: torch.Tensor  # (R,) rows of the batch
    ctx: torch.Tensor  # (R, 512, Dt)
    base: torch.Tensor  # (R, C, H, W)
    target: torch.Tensor  # (R, C, H, W)
    blocks: list[int] | None = None


def fit_all(anima, fits: dict[str, Rows], x_t: torch.Tensor, sigma: torch.Tensor, iters: int, chunk: int,
            fd_step: float = 1e-3, progress: bool = False, desc: str = "fit") -> dict[str, Fit]:
    """Every fit of one batch as one set of rows (in chunks of ``chunk``), split back by fit."""
    rows = list(fits.values())
    idx = torch.cat([r.index for r in rows])
    ctx, base, target = (torch.cat([getattr(r, k) for r in rows]) for k in ("ctx", "base", "target"))
    mask = torch.cat([masks(anima.num_blocks, len(r.index), r.blocks) for r in rows])
    fit_ = fit_chunks(lambda sl: velocity_change(anima, x_t[idx[sl]], sigma[idx[sl]], ctx[sl], mask[sl], base[sl]),
                      target, anima.dit_config.hidden, iters, chunk, fd_step, progress, desc)
    out, start = {}, 0
    for name, r in fits.items():
        part, start = slice(start, start + len(r.index)), start + len(r.index)
        out[name] = Fit(fit_.delta[part], fit_.change[part], fit_.r2[part], fit_.history[:, part])
    return out


@torch.no_grad()
def control_target(anima, rows: Rows, x_t: torch.Tensor, sigma: torch.Tensor, e_norm: torch.Tensor, scale: float,
                   generator: torch.Generator) -> torch.Tensor:
    """The positive control's target: the velocity change a known vector makes on ``rows`` (every block and the
    final layer; a random direction per row, norm ``scale`` x that row's t_embedding_norm output norm ``e_norm``
    (R,)), so a vector that reproduces it exactly exists."""
    k = torch.randn(len(rows.index), anima.dit_config.hidden, generator=generator).to(e_norm.device)
    known = k / k.norm(dim=1, keepdim=True) * scale * e_norm[:, None]
    f = velocity_change(anima, x_t[rows.index], sigma[rows.index], rows.ctx, masks(anima.num_blocks, len(known)),
                        rows.base)
    return f(known).view_as(rows.target)


def next_prompts_target(target: torch.Tensor) -> torch.Tensor:
    """Null (b): row r gets row r+1's target (cyclic; rows are one per prompt), rescaled to row r's norm."""
    other = target.roll(-1, 0)
    return other * (target.flatten(1).norm(dim=1) / other.flatten(1).norm(dim=1)).view(-1, *[1] * (target.ndim - 1))


@torch.no_grad()
def source_cosines(anima, family: str, modulation: Modulation, delta: torch.Tensor, oracle: Fit, x_t: torch.Tensor,
                   sigma: torch.Tensor, ctx: torch.Tensor, base: torch.Tensor, target: torch.Tensor, suffix: str,
                   n_prompts: int, n_boot: int, seed: int) -> dict[str, float]:
    """A source's delta response (its ``modulation`` on the rows) against the oracle's velocity change and the
    target, per row, summarised over prompts; a source that adds at the oracle's point (width D) compares its
    vector ``delta`` (1, D) with the oracle's too."""
    response = (_velocity(anima, modulation, x_t, sigma, ctx) - base).flatten(1)
    pairs = {"oracle_cos": (response, oracle.change), "target_cos": (response, target.flatten(1))}
    if delta.shape[-1] == oracle.delta.shape[-1]:
        pairs["vector_cos"] = (delta.float().expand(len(x_t), -1), oracle.delta)
    out = {}
    for kind, (a, b) in pairs.items():
        out |= prompt_summary(f"{kind}/{family}{suffix}", F.cosine_similarity(a, b, dim=1), n_prompts, n_boot,
                              seed)[0]
    return out


def _velocity(anima, modulation: Modulation, x_t, sigma, ctx) -> torch.Tensor:
    with inject(anima, modulation):
        return anima.velocity(x_t, sigma, ctx).float()


# ------------------------------------------------------------------------------- statistics over prompts
def prompt_summary(name: str, rows: torch.Tensor, n_prompts: int, n_boot: int, seed: int
                   ) -> tuple[dict[str, float], np.ndarray]:
    """Per-row values (R,), prompt-major, -> {name, name_ci_low, name_ci_high}: the mean over prompt means with its
    BCa interval over prompts (a prompt's noise draws are one cluster), and the prompt means (P,)."""
    per = rows.double().cpu().numpy().reshape(n_prompts, -1).mean(1)
    ci = cluster_bca((per,), np.mean, n_boot=n_boot, seed=seed)
    return {name: ci.value, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high}, per


def null_tests(per_prompt: dict[tuple[str, float], np.ndarray], sigmas, n_boot: int, seed: int,
               statistic: str = "quality", nulls: tuple[str, ...] = ("neutral", "permuted")) -> dict[str, float]:
    """Per fit its R^2 averaged over the sigmas it ran at (a prompt's mean is its cluster value) with a BCa interval over prompts,
    and the statistic against each null: the paired difference over prompts with its interval, the exact swap
    null (the fit labels exchanged within a prompt), p, Holm over the nulls, and the MDE."""
    fits = list(dict.fromkeys(name for name, _ in per_prompt))
    mean = {name: np.mean([per_prompt[name, s] for s in sigmas if (name, s) in per_prompt], axis=0)
            for name in fits}  # (P,) each, over the sigmas the fit ran at
    out = {}
    for name, values in mean.items():
        ci = cluster_bca((values,), np.mean, n_boot=n_boot, seed=seed)
        out |= {f"{name}/r2": ci.value, f"{name}/r2_ci_low": ci.low, f"{name}/r2_ci_high": ci.high}
    tests = {}
    for null in nulls:
        a, b = mean[statistic], mean[null]
        ci = cluster_bca((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), n_boot=n_boot, seed=seed)
        summary = null_summary(ci.value, swap_null(a, b, lambda x, y: float(np.mean(x - y))), exact=True)
        tests[null] = {"diff": ci.value, "diff_ci_low": ci.low, "diff_ci_high": ci.high, "p": summary["p"],
                       "mde": summary["mde"]}
    for null, p_adj in zip(tests, holm([t["p"] for t in tests.values()]), strict=True):
        out |= {f"vs_{null}/{k}": v for k, v in tests[null].items()} | {f"vs_{null}/p_holm": float(p_adj)}
    return out


def figure(per_prompt: dict[tuple[str, float], np.ndarray], sigmas):
    """R^2 per sigma for every fit: prompt means (dots) and their mean (bar)."""
    fits = list(dict.fromkeys(name for name, _ in per_prompt))
    fig = new_figure(figsize=(2.2 + 1.1 * len(fits), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(sigmas)
    for j, s in enumerate(sigmas):
        x = np.arange(len(fits)) + (j - (len(sigmas) - 1) / 2) * width
        ax.bar(x, [per_prompt[f, s].mean() if (f, s) in per_prompt else np.nan for f in fits], width, alpha=0.6,
               label=f"sigma {s:g}", color=f"C{j}")
        for xi, f in zip(x, fits, strict=True):
            if (f, s) in per_prompt:
                ax.scatter(np.full(len(per_prompt[f, s]), xi), per_prompt[f, s], s=6, color="k", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(fits)), fits, rotation=20)
    ax.set_ylabel("R² of the fitted modulation vector")
    ax.legend(fontsize=8)
    return fig
