"""Does modulation guidance raise image quality with its weight, and does it still do so at every CFG scale?

The proposal claims that Eq. 3 "yields quality improvements orthogonal to CFG". This module measures that claim on
a model whose images can be scored (the toy world and its ``quality_score``). For one modulation source it samples a
weight x CFG grid from shared initial noise (so every comparison is paired: same prompt, same noise), scores every
image, and reduces the scores to

- the dose-response: within each (prompt, noise) row the Spearman correlation of score with w, averaged over rows,
  and the OLS slope of score on w (score points per unit w);
- the effect ``score(w_max) - score(0)`` at every CFG scale, with a percentile bootstrap CI over rows, so "persists
  across CFG" is a number per scale;
- two baselines from the same noise: the plain model (no modulation at all) and what a user would try first, the
  p+ tags written into the prompt.

``w0_max_abs_diff`` is measured, not assumed: a hand-written sampler of the *base-projection model* (each row's
``P(prompt)`` and nothing else: no delta, no block schedule, no row-policy arithmetic, no cell batching) is compared
with the guided sampler's w = 0 cells. Note what "unguided" means here: Eq. 3 at w = 0 is ``y = P(p)``, the model
*with* the distilled projection; the plain model without any projection is a different model, and its distance to
w = 0 is reported separately (``w0_vs_plain_max_abs_diff``, ``base_effect``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from anima_probe.errors import InputError, UsageError
from anima_probe.guidance import families
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.guided import Cell, Guidance, GuidedPrompts, modulation_for, sample_cells
from anima_probe.guidance.modulation import Modulation, inject
from anima_probe.guidance.samplers import cfg_velocity, sample_euler, simple_sigmas
from anima_probe.guidance.schedules import Schedule
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.figures import new_figure
from anima_probe.probes.stats import bootstrap_ci
from anima_probe.toyworld.scorer import quality_score
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS, CONTENT_TYPES

# The other port's convention, for the second policy: per-row-base (delta on both rows: CFG cancels it) against
# cond-only (delta on the cond row only: CFG scales it); official (uncond P(""), no delta) against both.
CONTRAST_POLICY = {CFGRowPolicy.PER_ROW_BASE: CFGRowPolicy.COND_ONLY, CFGRowPolicy.COND_ONLY: CFGRowPolicy.PER_ROW_BASE,
                   CFGRowPolicy.OFFICIAL: CFGRowPolicy.BOTH, CFGRowPolicy.BOTH: CFGRowPolicy.OFFICIAL}


def toy_prompts(n: int) -> list[str]:
    """n toy-world prompts, content tags + one artist, no quality or resolution tags (the guidance supplies those).
    Contents cycle in the proposal's order; artists step by 5 (coprime with 12) so no pair repeats before 12."""
    if n < 1:
        raise ValueError(f"need at least one prompt, got {n}")
    return [f"{', '.join(CONTENT_TAGS[CONTENT_TYPES[i % len(CONTENT_TYPES)]])}, {ARTISTS[(5 * i) % len(ARTISTS)]}"
            for i in range(n)]


@dataclass(frozen=True)
class Sweep:
    """What is swept, and how each image is sampled (Euler, the shift schedule)."""

    ws: tuple[float, ...]
    cfgs: tuple[float, ...]
    steps: int = 8
    shift: float = 3.0
    schedule: Schedule = Schedule()

    def __post_init__(self):
        if 0.0 not in self.ws or len(set(self.ws)) < 2:
            raise ValueError(f"ws must contain 0 (the base model) and at least one other weight, got {self.ws}")
        if not self.cfgs or min(self.cfgs) < 1.0:
            raise ValueError(f"cfgs must be CFG scales >= 1 (1 = no CFG), got {self.cfgs}")


def scores(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (...) toy quality scores (1..9 scale)."""
    flat = images.reshape(-1, *images.shape[-3:]).permute(0, 2, 3, 1).float().cpu().numpy()  # (N, H, W, 3)
    return quality_score(flat).reshape(images.shape[:-3])


# ------------------------------------------------------------------------------- the calibrated dose
@dataclass(frozen=True)
class Calibration:
    """The dose at which modulation moves the velocity as far as the quality tags in the prompt do.

    ``text_norm``: mean over rows and steps of ||v(x; "p+, prompt") - v(x; "p-, prompt")|| (cross-attention only:
    every row keeps its base modulation); ``mod_norm``: the same mean of ||v(x; prompt, w) - v(x; prompt, 0)|| at
    ``w``; ``ratio`` = mod_norm / text_norm (1 when the search converged)."""

    w: float
    text_norm: float
    mod_norm: float

    @property
    def ratio(self) -> float:
        return self.mod_norm / self.text_norm


@torch.no_grad()
def calibrated_w(anima, gp: GuidedPrompts, prompts: Sequence[str], pos: str, neg: str, noise: torch.Tensor,
                 sweep: Sweep, *, iterations: int = 4, tolerance: float = 0.01) -> Calibration:
    """The w at which the norm of the modulation-induced velocity change equals the norm of the text-induced one
    (issue 11: "the headline is never w_max alone"), for one model and source, along the base model's own path.

    The states are those of the w = 0 Euler trajectory of each row at CFG 1 (every step but the last sigma 0), so
    the dose is read where the sampler actually goes, not on an arbitrary noise level. Both changes are measured
    on the cond row with everything else held: the text change swaps only the cross-attention context (the row's
    base modulation ``P(prompt)`` stays), the modulation change only adds ``w * Delta`` on the sweep's block
    schedule. The modulation change is not linear in w (AdaLN's shift/scale/gate pass through the blocks), so w is
    found by the fixed-point iteration ``w <- w * text_norm / mod_norm(w)`` from w = 1 until the norms agree within
    ``tolerance`` (the ratio it reaches is kept in the record, so a search that did not converge is visible)."""
    if len(prompts) != len(gp):
        raise ValueError(f"{len(prompts)} prompt strings for {len(gp)} prepared prompts")
    states = []

    def record(step: dict) -> None:  # the state and its w = 0 velocity, v = (x - denoised) / sigma
        x, s = step["x"], step["sigma"]
        states.append((x.clone(), torch.full((x.shape[0],), s, device=x.device), (x - step["denoised"]) / s))

    base = modulation_for(gp, Guidance(0.0, sweep.schedule), anima.num_blocks, cfg=False)
    with inject(anima, base):
        sample_euler(lambda x, s: anima.velocity(x, s, gp.cond_ctx), noise.to(anima.device),
                     simple_sigmas(sweep.steps, sweep.shift), callback=record, disable=True)
        tagged = encode_prompts(anima, [f"{t}, {p}" for t in (pos, neg) for p in prompts]).crossattn_emb
        plus, minus = tagged.chunk(2)  # (B, 512, Dt) each
        text = _mean_norm([anima.velocity(x, s, plus) - anima.velocity(x, s, minus) for x, s, _ in states])

    def mod_norm(w: float) -> float:
        with inject(anima, modulation_for(gp, Guidance(w, sweep.schedule), anima.num_blocks, cfg=False)):
            return _mean_norm([anima.velocity(x, s, gp.cond_ctx) - v0 for x, s, v0 in states])

    if text == 0.0:
        raise UsageError(f"p+ {pos!r} and p- {neg!r} written into the prompt do not change the velocity: there is no "
                         "text change to calibrate against")
    w, moved = 1.0, mod_norm(1.0)
    for _ in range(iterations):
        if moved < 1e-5 * text:  # v0 is recovered from the sampler's x0 estimate: ~1e-7 rounding, never exactly 0
            raise InputError("the modulation source does not move the velocity at all (zero delta or zero-init "
                             "projection): no dose can match the text's change")
        if abs(moved / text - 1.0) < tolerance:
            break
        w *= text / moved
        moved = mod_norm(w)
    return Calibration(w, text, moved)


def _mean_norm(changes: list[torch.Tensor]) -> float:
    """Mean over steps and rows of the per-row L2 norm of a velocity change (each (B, C, h, w))."""
    return float(torch.stack([c.flatten(1).norm(dim=1) for c in changes]).mean())


@torch.no_grad()
def reference_sample(anima, cond_ctx: torch.Tensor, uncond_ctx: torch.Tensor, modulation: Modulation | None,
                     cfg: float, noise: torch.Tensor, sweep: Sweep) -> torch.Tensor:
    """Images (B, 3, H, W) from a plain Euler loop written here, independent of ``sample_cells`` (no cells, no Eq. 3
    vectors): the samplers' CFG velocity under ``modulation`` (rows to match: [cond; uncond], or cond only at CFG
    1), or none."""
    velocity = cfg_velocity(anima.velocity, cond_ctx, uncond_ctx, cfg)
    with inject(anima, modulation) if modulation is not None else contextlib.nullcontext():
        x = sample_euler(velocity, noise.to(anima.device), simple_sigmas(sweep.steps, sweep.shift), disable=True)
    return anima.decode(x)


def base_modulation(gp: GuidedPrompts, policy: CFGRowPolicy, schedule: Schedule, num_blocks: int,
                    cfg: float) -> Modulation:
    """The base-projection model by hand: each row's own ``P(prompt)`` (uncond rows: the policy's base), laid out
    as the family lays out a vector (pooled_text_proj: every block and the final layer; cosmos: ``scales[i] * P``
    on the schedule's blocks), with no weight, delta or Eq. 3 arithmetic."""
    uncond = gp.base_cond if policy is CFGRowPolicy.BOTH else gp.base_uncond[policy.value]
    rows = gp.base_cond if cfg == 1.0 else torch.cat([gp.base_cond, uncond])  # (R, W)
    fam = families.get(gp.family)
    blocks = fam.block_vectors(lambda i: rows, num_blocks, schedule.active(num_blocks), gp.scales)
    return Modulation(gp.family, blocks, rows if fam.final_arg is not None else None)


def head(gp: GuidedPrompts, k: int) -> GuidedPrompts:
    """The first k prompts of a prepared set (the delta and the adapter's scales are shared)."""
    return replace(gp, cond_ctx=gp.cond_ctx[:k], uncond_ctx=gp.uncond_ctx[:k], base_cond=gp.base_cond[:k],
                   base_uncond={key: v[:k] for key, v in gp.base_uncond.items()})


def w0_checks(anima, gp: GuidedPrompts, sweep: Sweep, policy: CFGRowPolicy, cfg: float, noise: torch.Tensor,
              in_batch: torch.Tensor, plain: torch.Tensor, rows: int = 2) -> dict[str, float]:
    """Pixel-space checks of w = 0 at one CFG scale (images (B, 3, H, W) in [0, 1]):

    - ``w0_max_abs_diff``: the w = 0 cell sampled alone against the hand-written base-projection sampler with the
      same batch shape. Must be exactly 0 (same vectors, same DiT calls, same CFG arithmetic);
    - ``w0_batch_max_abs_diff``: that cell alone against the same cell inside the sweep's batch: float32 GEMMs
      round differently at other batch sizes, so this is ~1e-6, float noise rather than guidance;
    - ``w0_vs_plain_max_abs_diff``: w = 0 against the plain model (no projection); not 0: ``y = P(p)`` is a model
      change of its own.

    The first two checks run on the first ``rows`` rows only (bit-exactness is per row; this keeps them cheap).
    """
    sub, noise = head(gp, rows), noise[:rows]
    alone = sample_cells(anima, sub, [Cell(Guidance(0.0, sweep.schedule, row_policy=policy), cfg)], noise,
                         steps=sweep.steps, shift=sweep.shift)[0]  # (b, C, h, w)
    alone = anima.decode(alone)
    ref = reference_sample(anima, sub.cond_ctx, sub.uncond_ctx,
                           base_modulation(sub, policy, sweep.schedule, anima.num_blocks, cfg), cfg, noise, sweep)
    return {f"w0_max_abs_diff/cfg{cfg:g}": float((alone - ref).abs().max()),
            f"w0_batch_max_abs_diff/cfg{cfg:g}": float((alone - in_batch[:rows]).abs().max()),
            f"w0_vs_plain_max_abs_diff/cfg{cfg:g}": float((in_batch - plain).abs().max())}


@torch.no_grad()
def sample_source(anima, gp: GuidedPrompts, sweep: Sweep, policy: CFGRowPolicy, contrast: CFGRowPolicy | None,
                  noise: torch.Tensor, progress=None) -> tuple[pd.DataFrame, dict[str, float], torch.Tensor]:
    """One source over the sweep, one batch per CFG scale (plain, every w, the contrast policy at 0 and w_max).
    Returns long-form scores (arm, policy, w, cfg, row, score), the pixel-space checks, and the images of the
    own policy as (1 + len(ws), len(cfgs), B, 3, H, W) with the plain model first."""
    ws, frames, grid, checks = list(sweep.ws), [], [], {}
    i0, i_max = 1 + ws.index(0.0), 1 + ws.index(max(ws))
    for cfg in sweep.cfgs:
        cells = [Cell(None, cfg)] + [Cell(Guidance(w, sweep.schedule, row_policy=policy), cfg) for w in ws]
        extra = _contrast_ws(policy, contrast, max(ws)) if cfg != 1.0 else []  # CFG 1 never runs the uncond row
        cells += [Cell(Guidance(w, sweep.schedule, row_policy=contrast), cfg) for w in extra]
        x = sample_cells(anima, gp, cells, noise, steps=sweep.steps, shift=sweep.shift)  # (K, B, C, h, w)
        decoded = anima.decode(x.flatten(0, 1))  # (K*B, 3, H, W)
        images = decoded.view(len(cells), len(gp), *decoded.shape[1:])
        s = scores(images)  # (K, B)
        frames += [_frame("plain", "none", [np.nan], cfg, s[:1]), _frame("guided", policy.value, ws, cfg,
                                                                            s[1 : 1 + len(ws)])]
        if contrast is not None:  # where not sampled (CFG 1; w = 0 with the same uncond base), bit for bit the own
            c_ws = [0.0, max(ws)]
            frames.append(_frame("guided", contrast.value, c_ws, cfg,
                                 np.stack([s[1 + len(ws) + extra.index(w)] if w in extra else s[1 + ws.index(w)]
                                           for w in c_ws])))
        checks |= w0_checks(anima, gp, sweep, policy, cfg, noise, images[i0], images[0])
        checks[f"pixel_change/cfg{cfg:g}"] = float((images[i_max] - images[i0]).abs().mean())
        grid.append(images[: 1 + len(ws)])
        if progress is not None:
            progress.update(1)
    checks["delta_rel_norm"] = float(gp.delta.norm() / gp.base_cond.norm(dim=-1).mean())
    return pd.concat(frames, ignore_index=True), checks, torch.stack(grid, dim=1)


def _contrast_ws(policy: CFGRowPolicy, contrast: CFGRowPolicy | None, w_max: float) -> list[float]:
    """Weights the contrast policy must sample at CFG > 1: w_max, and w = 0 only if its uncond row differs from the
    own policy's there (per-row-base and cond-only share P(negative); official P("") and both P(prompt) do not)."""
    if contrast is None:
        return []
    same_base = {policy, contrast} <= {CFGRowPolicy.PER_ROW_BASE, CFGRowPolicy.COND_ONLY} or policy is contrast
    return [w_max] if same_base else [0.0, w_max]


def _frame(arm: str, policy: str, ws: Sequence[float], cfg: float, s: np.ndarray) -> pd.DataFrame:
    """s (len(ws), B) -> long rows."""
    K, B = s.shape
    return pd.DataFrame({"arm": arm, "policy": policy, "w": np.repeat(np.asarray(ws, float), B), "cfg": cfg,
                         "row": np.tile(np.arange(B), K), "score": s.reshape(-1)})


@torch.no_grad()
def prompt_baseline(anima, prompts: list[str], pos: str, negative: str, sweep: Sweep,
                    noise: torch.Tensor) -> tuple[pd.DataFrame, torch.Tensor]:
    """The user's obvious alternative: p+ written in front of the prompt, no modulation, the same noise. Returns
    its scores and images (len(cfgs), B, 3, H, W)."""
    tc = encode_prompts(anima, [f"{pos}, {p}" for p in prompts] + [negative])
    B = len(prompts)
    frames, images = [], []
    for cfg in sweep.cfgs:
        images.append(reference_sample(anima, tc.crossattn_emb[:B], tc.crossattn_emb[B:].expand(B, -1, -1), None,
                                       cfg, noise, sweep))  # (B, 3, H, W)
        frames.append(_frame("p_plus_prompt", "none", [np.nan], cfg, scores(images[-1])[None]))
    return pd.concat(frames, ignore_index=True), torch.stack(images)


# ------------------------------------------------------------------------------- from scores to numbers
def _table(df: pd.DataFrame, policy: str, cfg: float) -> pd.DataFrame:
    """(rows, ws) score table of one policy at one CFG scale."""
    sub = df[(df.arm == "guided") & (df.policy == policy) & (df.cfg == cfg)]
    return sub.pivot(index="row", columns="w", values="score").sort_index(axis=1)


def paired_effect(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of per-row differences and its percentile bootstrap 95% CI over rows."""
    lo, hi = bootstrap_ci(lambda idx: float(diff[idx].mean()), len(diff), n_boot=n_boot, seed=seed)
    return float(diff.mean()), lo, hi


def within_row_spearman(table: pd.DataFrame) -> float:
    """Mean over rows of Spearman(w, score); a row whose scores do not change counts 0 (no trend)."""
    ranks_w = pd.Series(table.columns).rank().to_numpy()
    rho = [np.corrcoef(ranks_w, r)[0, 1] if np.ptp(r) > 0 else 0.0 for r in table.rank(axis=1).to_numpy()]
    return float(np.mean(rho))


def ols_slope(table: pd.DataFrame) -> float:
    """Slope of score on w pooled over rows, with each row's own intercept (score points per unit w)."""
    w = table.columns.to_numpy(float)
    centred = table.to_numpy() - table.to_numpy().mean(axis=1, keepdims=True)  # (rows, ws)
    return float((centred @ (w - w.mean())).sum() / (len(table) * ((w - w.mean()) ** 2).sum()))


def dose_metrics(df: pd.DataFrame, policy: str, cfgs: Sequence[float], n_boot: int,
                 seed: int) -> dict[str, float]:
    """Per CFG: effect (w_max - 0) with CI, within-row Spearman, OLS slope; plus the fraction of CFG scales whose
    effect CI lies above 0 (``persists``: 1.0 = at every scale)."""
    out, above = {}, []
    for cfg in cfgs:
        t = _table(df, policy, cfg)
        mean, lo, hi = paired_effect((t[t.columns.max()] - t[0.0]).to_numpy(), n_boot, seed)
        out |= {f"effect/cfg{cfg:g}": mean, f"effect_lo/cfg{cfg:g}": lo, f"effect_hi/cfg{cfg:g}": hi}
        above.append(lo > 0)
        if len(t.columns) > 2:
            out |= {f"spearman/cfg{cfg:g}": within_row_spearman(t), f"slope/cfg{cfg:g}": ols_slope(t)}
    out["persists"] = float(np.mean(above))
    return out


def arm_effect(df: pd.DataFrame, arm: str, cfg: float, n_boot: int, seed: int, *, policy: str | None = None,
               w: float = 0.0) -> tuple[float, float, float]:
    """Paired effect of ``arm`` (p_plus_prompt) or of the guided w (``policy`` given) against the plain model."""
    plain = df[(df.arm == "plain") & (df.cfg == cfg)].sort_values("row").score.to_numpy()
    sel = (df.arm == arm) & (df.cfg == cfg)
    if policy is not None:
        sel &= (df.policy == policy) & (df.w == w)
    return paired_effect(df[sel].sort_values("row").score.to_numpy() - plain, n_boot, seed)


def prompt_metrics(plain: pd.DataFrame, pplus: pd.DataFrame, cfgs: Sequence[float], n_boot: int,
                   seed: int) -> dict[str, float]:
    """The p+-in-the-prompt baseline against the plain model (its rows in ``plain``), per CFG with its CI."""
    out = {}
    for c in cfgs:
        mean, lo, hi = arm_effect(pd.concat([plain, pplus]), "p_plus_prompt", c, n_boot, seed)
        out |= {f"p_plus_prompt/effect/cfg{c:g}": mean, f"p_plus_prompt/effect_lo/cfg{c:g}": lo,
                f"p_plus_prompt/effect_hi/cfg{c:g}": hi}
    return out


def family_metrics(df: pd.DataFrame, checks: dict[str, float], policies: Sequence[CFGRowPolicy | None],
                   cfgs: Sequence[float], n_boot: int, seed: int) -> dict[str, float]:
    """One source's numbers: the pixel checks (``w0_max_abs_diff`` also as its max over CFG scales), the dose
    metrics of each policy, and against the plain model the base effect (w = 0) and the total at w_max."""
    out = dict(checks)
    out["w0_max_abs_diff"] = max(v for k, v in checks.items() if k.startswith("w0_max_abs_diff/"))
    for policy in filter(None, policies):
        out |= {f"{policy.value}/{k}": v for k, v in dose_metrics(df, policy.value, cfgs, n_boot, seed).items()}
    own, w_max = policies[0].value, df[df.arm == "guided"].w.max()
    for c in cfgs:
        out[f"base_effect/cfg{c:g}"] = arm_effect(df, "guided", c, n_boot, seed, policy=own, w=0.0)[0]
        out[f"vs_plain_wmax/cfg{c:g}"] = arm_effect(df, "guided", c, n_boot, seed, policy=own, w=w_max)[0]
    return out


def dose_figure(df: pd.DataFrame, cfgs: Sequence[float], n_boot: int, seed: int):
    """One panel per (family, policy), two per row: mean paired score change against the plain model vs w (symlog
    axis, so the low doses are readable), one line per CFG scale, 95% bootstrap CI bars; dashed: the
    p+-in-the-prompt baseline at the same scale."""
    panels = df[df.arm == "guided"][["family", "policy"]].drop_duplicates().to_numpy().tolist()
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = new_figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    colours = [f"C{i}" for i in range(len(cfgs))]
    for k, (family, policy) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        sub = df[df.family.isin([family, "none"])]  # "none": the family-free p+ prompt baseline
        for cfg, colour in zip(cfgs, colours, strict=True):
            ws = sorted(sub[(sub.arm == "guided") & (sub.policy == policy) & (sub.cfg == cfg)].w.unique())
            eff = np.array([arm_effect(sub, "guided", cfg, n_boot, seed, policy=policy, w=w) for w in ws])  # (W, 3)
            ax.errorbar(ws, eff[:, 0], yerr=[eff[:, 0] - eff[:, 1], eff[:, 2] - eff[:, 0]], color=colour,
                        marker="o", ms=3, capsize=2, label=f"CFG {cfg:g}")
            ax.axhline(arm_effect(sub, "p_plus_prompt", cfg, n_boot, seed)[0], color=colour, ls="--", lw=0.8)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(ws, [f"{w:g}" for w in ws])
        ax.set_title(f"{family} / {policy}", fontsize=8)
        ax.set_xlabel("guidance weight w")
        if k % cols == 0:
            ax.set_ylabel("quality score change vs plain model")
        ax.legend(fontsize=7, title="dashed: p+ in prompt", title_fontsize=6)
    return fig
