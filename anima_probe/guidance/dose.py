"""Does modulation guidance raise image quality with its weight, and does it still do so at every CFG scale?

The proposal claims that Eq. 3 "yields quality improvements orthogonal to CFG". This module measures that claim on
a model whose images can be scored (the toy world and its ``quality_score``). For one modulation source it first
calibrates the dose (``calibrated_w``: where the modulation moves the velocity as far as p+/p- in the prompt do),
per block schedule, then samples a dose x CFG grid in units of that w_cal from shared initial noise (every
comparison is paired: same prompt, same noise), scores every image, and reduces the scores to

- the headline: the effect ``score(w_cal) - score(0)`` at every CFG scale and schedule, with a percentile bootstrap
  CI over prompts (clusters: a prompt's noise draws are not independent), so "persists across CFG" is a number
  per scale; the swapped pair (-w_cal) beside it;
- the breakdown rule (``BREAKDOWN_SHARE``): a cell whose images the scorer mostly cannot read is broken, marked,
  and kept out of every claim;
- the dose-response over the unbroken cells of the curve: within-row Spearman and the OLS slope per unit w_cal;
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
from anima_probe.probes.stats import bootstrap_ci, mde
from anima_probe.toyworld.scorer import in_range, quality_score
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS, CONTENT_TYPES


def toy_prompts(n: int) -> list[str]:
    """n toy-world prompts, content tags + one artist, no quality or resolution tags (the guidance supplies those).
    Contents cycle in the proposal's order; artists step by 5 (coprime with 12) so no pair repeats before 12."""
    if n < 1:
        raise ValueError(f"need at least one prompt, got {n}")
    return [f"{', '.join(CONTENT_TAGS[CONTENT_TYPES[i % len(CONTENT_TYPES)]])}, {ARTISTS[(5 * i) % len(ARTISTS)]}"
            for i in range(n)]


# The null of the same length: a pair of two artist tags (quality-neutral by the toy world's construction), fixed
# before any run. Its Eq. 3 direction, dosed to the length of p+/p-'s (``neutral_dose``), is a push as large as the
# guidance's in a direction that carries no quality: what the same-sized move costs or gains by itself.
NEUTRAL_PAIR: tuple[str, str] = ARTISTS[:2]


def neutral_dose(w: float, gp: GuidedPrompts, neutral: GuidedPrompts) -> float:
    """The neutral pair's w that gives its Eq. 3 direction the length of p+/p-'s at ``w``."""
    return w * float(gp.delta.norm() / neutral.delta.norm())


@dataclass(frozen=True)
class Sweep:
    """What is swept, and how each image is sampled (Euler, the shift schedule). ``ws`` are weights in units of
    the calibrated dose w_cal (``calibrated_w``; negative: p+ and p- swapped); ``schedule`` is the one whose curve
    is sampled (the others are read at w_cal only, ``arms``)."""

    ws: tuple[float, ...]
    cfgs: tuple[float, ...]
    steps: int = 8
    shift: float = 3.0
    schedule: Schedule = Schedule()

    def __post_init__(self):
        if 0.0 not in self.ws or len(set(self.ws)) < 2:
            raise ValueError(f"ws must contain 0 (the base model) and at least one other weight, got {self.ws}")
        if 1.0 not in self.ws:
            raise ValueError(f"ws (units of w_cal) must contain 1, the calibrated dose the headline is read at, got "
                             f"{self.ws}")
        if not self.cfgs or min(self.cfgs) < 1.0:
            raise ValueError(f"cfgs must be CFG scales >= 1 (1 = no CFG), got {self.cfgs}")


def _flat(images: torch.Tensor) -> np.ndarray:
    return images.reshape(-1, *images.shape[-3:]).permute(0, 2, 3, 1).float().cpu().numpy()  # (N, H, W, 3)


def scores(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (...) toy quality scores (1..9 scale)."""
    return quality_score(_flat(images)).reshape(images.shape[:-3])


def readable(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (...) bool: the images the scorer reads (``scorer.in_range``)."""
    return in_range(_flat(images)).reshape(images.shape[:-3])


# ------------------------------------------------------------------------------- the calibrated dose
@dataclass(frozen=True)
class Calibration:
    """The dose at which modulation moves the velocity as far as the quality tags in the prompt do.

    ``text_norm``: mean over rows and steps of ||v(x; "p+, prompt") - v(x; "p-, prompt")|| (cross-attention only:
    every row keeps its base modulation); ``mod_norm``: the same mean of ||v(x; prompt, +w) - v(x; prompt, -w)|| at
    ``w`` (Eq. 3 with the pair against the swapped pair); ``ratio`` = mod_norm / text_norm (1 when the search
    converged)."""

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

    Like for like: the text change is the contrast p+ vs p- written into the prompt, ``v("p+, prompt") -
    v("p-, prompt")``; the modulation change is the same contrast made by Eq. 3, the pair against the swapped pair,
    ``v(+w) - v(-w)`` (the headline cell against the negative control's). Until v5 the modulation side was one-sided,
    ``v(w) - v(0)``: a push from the base asked to go as far as the whole p+/p- contrast, about twice the dose. On the
    stop-21 positive control, whose Eq. 3 at w = 1 was by construction the training input of p+'s quality, the
    one-sided rule gave w_cal 1.86 and the two-sided one 1.1 (data/toyworld/README.md, "The known answer").

    The states are those of the w = 0 Euler trajectory of each row at CFG 1 (every step but the last sigma 0), so
    the dose is read where the sampler actually goes, not on an arbitrary noise level. Both changes are measured
    on the cond row with everything else held: the text change swaps only the cross-attention context (the row's
    base modulation ``P(prompt)`` stays), the modulation change only adds ``+-w * Delta`` on the sweep's block
    schedule. The modulation change is not linear in w (AdaLN's shift/scale/gate pass through the blocks), so w is
    found by the fixed-point iteration ``w <- w * text_norm / mod_norm(w)`` from w = 1 until the norms agree within
    ``tolerance`` (the ratio it reaches is kept in the record, so a search that did not converge is visible)."""
    if len(prompts) != len(gp):
        raise ValueError(f"{len(prompts)} prompt strings for {len(gp)} prepared prompts")
    states = []

    def record(step: dict) -> None:  # a state of the w = 0 path
        x = step["x"]
        states.append((x.clone(), torch.full((x.shape[0],), step["sigma"], device=x.device)))

    base = modulation_for(gp, Guidance(0.0, sweep.schedule), anima.num_blocks, cfg=False)
    with inject(anima, base):
        sample_euler(lambda x, s: anima.velocity(x, s, gp.cond_ctx), noise.to(anima.device),
                     simple_sigmas(sweep.steps, sweep.shift), callback=record, disable=True)
        tagged = encode_prompts(anima, [f"{t}, {p}" for t in (pos, neg) for p in prompts]).crossattn_emb
        plus, minus = tagged.chunk(2)  # (B, 512, Dt) each
        text = _mean_norm([anima.velocity(x, s, plus) - anima.velocity(x, s, minus) for x, s in states])

    def velocities(w: float) -> list[torch.Tensor]:
        with inject(anima, modulation_for(gp, Guidance(w, sweep.schedule), anima.num_blocks, cfg=False)):
            return [anima.velocity(x, s, gp.cond_ctx) for x, s in states]

    def mod_norm(w: float) -> float:  # the Eq. 3 contrast: the pair against the swapped pair
        return _mean_norm([a - b for a, b in zip(velocities(w), velocities(-w), strict=True)])

    if text == 0.0:
        raise UsageError(f"p+ {pos!r} and p- {neg!r} written into the prompt do not change the velocity: there is no "
                         "text change to calibrate against")
    w, moved = 1.0, mod_norm(1.0)
    for _ in range(iterations):
        if moved < 1e-5 * text:  # a zero delta gives +w and -w the same vectors
            raise InputError("the modulation source does not move the velocity at all (zero delta or zero-init "
                             "projection): no dose can match the text's change")
        if abs(moved / text - 1.0) < tolerance:
            break
        w *= text / moved
        moved = mod_norm(w)
    return Calibration(w, text, moved)


def calibrate_schedules(anima, gp: GuidedPrompts, prompts: Sequence[str], pos: str, neg: str, noise: torch.Tensor,
                        sweep: Sweep, schedules: Sequence[Schedule], rows: int,
                        progress=None) -> dict[str, Calibration]:
    """``calibrated_w`` for each block schedule (by its text form), on the first ``rows`` rows: the dose is a
    property of the model, the source and the blocks the vector enters, so each schedule gets its own."""
    out = {}
    for sched in schedules:
        out[sched.text()] = calibrated_w(anima, gp.rows(slice(rows)), prompts[:rows], pos, neg, noise[:rows],
                                         replace(sweep, schedule=sched))
        if progress is not None:
            progress.update(1)
    return out


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
    sub, noise = gp.rows(slice(rows)), noise[:rows]
    alone = sample_cells(anima, sub, [Cell(Guidance(0.0, sweep.schedule, row_policy=policy), cfg)], noise,
                         steps=sweep.steps, shift=sweep.shift)[0]  # (b, C, h, w)
    alone = anima.decode(alone)
    ref = reference_sample(anima, sub.cond_ctx, sub.uncond_ctx,
                           base_modulation(sub, policy, sweep.schedule, anima.num_blocks, cfg), cfg, noise, sweep)
    return {f"w0_max_abs_diff/cfg{cfg:g}": float((alone - ref).abs().max()),
            f"w0_batch_max_abs_diff/cfg{cfg:g}": float((alone - in_batch[:rows]).abs().max()),
            f"w0_vs_plain_max_abs_diff/cfg{cfg:g}": float((in_batch - plain).abs().max())}


@dataclass(frozen=True)
class Arm:
    """One guided cell of the sweep: its block schedule (text form), w in units of that schedule's calibrated dose
    (negative: p+ and p- swapped) and the Eq. 3 setting it samples."""

    schedule: str
    units: float
    guidance: Guidance


def arms(sweep: Sweep, schedules: Sequence[Schedule], w_cal: dict[str, float], policy: CFGRowPolicy,
         every_block: bool) -> list[Arm]:
    """The cells of one source: the sweep's own schedule over every unit of its calibrated dose (the curve), each
    other schedule at w = 0 and at its own w_cal only. A family whose base reaches every block whatever the schedule
    (``every_block``) has one w = 0 for all schedules, so only the first schedule samples it."""
    out = []
    for k, sched in enumerate(schedules):
        name = sched.text()
        units = sweep.ws if name == sweep.schedule.text() else (0.0, 1.0)
        out += [Arm(name, u, Guidance(u * w_cal[name], sched, row_policy=policy)) for u in units
                if u != 0.0 or not every_block or k == 0]
    return out


@torch.no_grad()
def sample_source(anima, gp: GuidedPrompts, sweep: Sweep, cells: Sequence[Arm], policy: CFGRowPolicy,
                  noise: torch.Tensor, plain: torch.Tensor | None = None, neutral: GuidedPrompts | None = None,
                  progress=None) -> tuple[pd.DataFrame, dict[str, float], torch.Tensor]:
    """One source, one ``sample_cells`` per CFG scale (the plain model, then every arm). ``plain``: the plain
    model's images (len(cfgs), B, 3, H, W) from another source's call on the same noise (the plain model has no
    source, so it is sampled once). ``neutral``: the same prompts prepared with ``NEUTRAL_PAIR``; its arm (``arm``
    "neutral") is the sweep's own schedule at w_cal, dosed to p+/p-'s length (``neutral_dose``).
    Returns long-form scores (arm, schedule, units, w, cfg, row, score, in_range),
    the pixel-space checks of the sweep's own schedule, and the images of its curve as
    (1 + len(ws), len(cfgs), B, 3, H, W) with the plain model first."""
    own = sweep.schedule.text()
    curve = [i for i, a in enumerate(cells) if a.schedule == own]
    i0 = 1 + next(i for i in curve if cells[i].units == 0.0)
    i1 = 1 + next(i for i in curve if cells[i].units == 1.0)
    frames, grid, checks = [], [], {}
    for c, cfg in enumerate(sweep.cfgs):
        x = sample_cells(anima, gp, ([] if plain is not None else [Cell(None, cfg)])
                         + [Cell(a.guidance, cfg) for a in cells], noise, steps=sweep.steps, shift=sweep.shift)
        decoded = anima.decode(x.flatten(0, 1))  # (K*B, 3, H, W)
        images = decoded.view(-1, len(gp), *decoded.shape[1:])  # (1 + len(cells), B, 3, H, W), plain first
        if plain is not None:
            images = torch.cat([plain[c][None].to(images), images])
        s, ok = scores(images), readable(images)  # (K, B) each
        frames.append(_frame("plain", "none", np.nan, np.nan, cfg, s[0], ok[0]))
        frames += [_frame("guided", a.schedule, a.units, a.guidance.w, cfg, s[1 + i], ok[1 + i])
                   for i, a in enumerate(cells)]
        if neutral is not None:
            at = cells[i1 - 1].guidance
            pushed = replace(at, w=neutral_dose(at.w, gp, neutral))
            x = sample_cells(anima, neutral, [Cell(pushed, cfg)], noise, steps=sweep.steps, shift=sweep.shift)[0]
            same = anima.decode(x)  # (B, 3, H, W)
            frames.append(_frame("neutral", own, 1.0, pushed.w, cfg, scores(same), readable(same)))
        checks |= w0_checks(anima, gp, sweep, policy, cfg, noise, images[i0], images[0])
        checks[f"pixel_change/cfg{cfg:g}"] = float((images[i1] - images[i0]).abs().mean())
        grid.append(images[[0] + [1 + i for i in curve]])
        if progress is not None:
            progress.update(1)
    checks["delta_rel_norm"] = float(gp.delta.norm() / gp.base_cond.norm(dim=-1).mean())
    return pd.concat(frames, ignore_index=True), checks, torch.stack(grid, dim=1)


def _frame(arm: str, schedule: str, units: float, w: float, cfg: float, s: np.ndarray,
           ok: np.ndarray) -> pd.DataFrame:
    """One cell's (B,) scores and in-range flags -> long rows."""
    return pd.DataFrame({"arm": arm, "schedule": schedule, "units": units, "w": w, "cfg": cfg,
                         "row": np.arange(len(s)), "score": s, "in_range": ok.astype(float)})


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
        frames.append(_frame("p_plus_prompt", "none", np.nan, np.nan, cfg, scores(images[-1]),
                             readable(images[-1])))
    return pd.concat(frames, ignore_index=True), torch.stack(images)


# ------------------------------------------------------------------------------- from scores to numbers
# The breakdown rule, fixed before the v3 run (issue 11 item 3): a cell is broken when more than this share of its
# images is out of the range the scorer reads (``scorer.in_range``: noise, stripes, flat colour score the floor 1).
# A broken cell is marked on the figure and kept out of every effect claim: its effect is reported, never read.
BREAKDOWN_SHARE = 0.25


def cluster_means(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """(P,) mean of `values` per cluster, clusters in sorted order. values, clusters: (rows,)."""
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    return np.bincount(inv, weights=np.asarray(values, float)) / np.bincount(inv)


def cluster_effect(diff: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of per-cluster mean differences and its percentile bootstrap 95% CI resampling *clusters* (prompts:
    the noise draws of one prompt are not independent samples). diff, clusters: (rows,)."""
    means = cluster_means(diff, clusters)  # (P,)
    lo, hi = bootstrap_ci(lambda idx: float(means[idx].mean()), len(means), n_boot=n_boot, seed=seed)
    return float(means.mean()), lo, hi


def clustered_mean(values, clusters, n_boot: int, seed: int) -> dict[str, float]:
    """Mean of per-cluster means, its percentile-bootstrap 95 % interval over clusters and the MDE (two-sided 5 %,
    80 % power) of a paired mean with that spread."""
    mean, lo, hi = cluster_effect(values, clusters, n_boot, seed)
    per = cluster_means(values, clusters)  # (P,)
    return {"mean": mean, "lo": lo, "hi": hi,
            "mde": mde(per.std(ddof=1) / np.sqrt(len(per)), alpha=0.025), "n": len(per)}


def _cell(df: pd.DataFrame, arm: str, cfg: float, schedule: str = "none", units: float | None = None) -> pd.DataFrame:
    """One cell's rows, sorted by row (units None: the cell has none, plain or the prompt baseline)."""
    sel = (df.arm == arm) & (df.cfg == cfg) & (df.schedule == schedule)
    if units is not None:
        sel &= np.isclose(df.units, units)
    return df[sel].sort_values("row")


def reference(df: pd.DataFrame, schedule: str, cfg: float) -> pd.DataFrame:
    """The w = 0 cell an arm of ``schedule`` is compared with: its own, or (a family whose base reaches every block
    whatever the schedule samples it once) the one that was sampled."""
    own = _cell(df, "guided", cfg, schedule, 0.0)
    return own if len(own) else df[(df.arm == "guided") & (df.cfg == cfg) & (df.units == 0.0)].sort_values("row")


def arm_effect(cell: pd.DataFrame, base: pd.DataFrame, prompts: int, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Paired effect of ``cell`` over ``base`` (same rows), CI over prompts (row r is prompt r % prompts)."""
    diff = cell.score.to_numpy() - base.score.to_numpy()
    return cluster_effect(diff, cell.row.to_numpy() % prompts, n_boot, seed)


def broken(cell: pd.DataFrame) -> bool:
    """The breakdown rule (``BREAKDOWN_SHARE``)."""
    return float(1.0 - cell.in_range.mean()) > BREAKDOWN_SHARE


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


def schedule_metrics(df: pd.DataFrame, schedule: str, cfgs: Sequence[float], prompts: int, n_boot: int,
                     seed: int) -> dict[str, float]:
    """One schedule's headline, per CFG: the effect at its calibrated dose (units 1) over w = 0 with its
    prompt-clustered CI, the share of those images in the scorer's range and whether the cell is broken; the
    swapped pair (units -1) where sampled; the MDE of the effect (two-sided 5 %, 80 % power, from the spread of its
    prompt means); where the neutral pair was sampled, its effect at the same length (``neutral``) and the
    guidance's excess over it (``excess``: paired, at - neutral); ``persists``: the share of CFG scales whose
    effect CI lies above 0 in an unbroken cell. On a curve (more than w = 0 and w_cal): within-row Spearman and
    OLS slope (per unit of w_cal) over its unbroken cells, and how many cells broke."""
    out, above = {}, []
    for cfg in cfgs:
        base, at = reference(df, schedule, cfg), _cell(df, "guided", cfg, schedule, 1.0)
        clusters = at.row.to_numpy() % prompts
        e = clustered_mean(at.score.to_numpy() - base.score.to_numpy(), clusters, n_boot, seed)
        out |= {f"effect/cfg{cfg:g}": e["mean"], f"effect_lo/cfg{cfg:g}": e["lo"], f"effect_hi/cfg{cfg:g}": e["hi"],
                f"mde/cfg{cfg:g}": e["mde"], f"in_range/cfg{cfg:g}": float(at.in_range.mean()),
                f"broken/cfg{cfg:g}": float(broken(at))}
        above.append(e["lo"] > 0 and not broken(at))
        if len(same := _cell(df, "neutral", cfg, schedule, 1.0)):
            for name, diff in (("neutral", same.score.to_numpy() - base.score.to_numpy()),
                               ("excess", at.score.to_numpy() - same.score.to_numpy())):
                n = clustered_mean(diff, clusters, n_boot, seed)
                out |= {f"{name}/effect/cfg{cfg:g}": n["mean"], f"{name}/effect_lo/cfg{cfg:g}": n["lo"],
                        f"{name}/effect_hi/cfg{cfg:g}": n["hi"]}
        if len(swapped := _cell(df, "guided", cfg, schedule, -1.0)):
            mean, lo, hi = arm_effect(swapped, base, prompts, n_boot, seed)
            out |= {f"swapped/effect/cfg{cfg:g}": mean, f"swapped/effect_lo/cfg{cfg:g}": lo,
                    f"swapped/effect_hi/cfg{cfg:g}": hi}
        curve = df[(df.arm == "guided") & (df.cfg == cfg) & (df.schedule == schedule)]
        if curve.units.nunique() > 2:
            ok = [u for u, c in curve.groupby("units") if not broken(c)]
            out[f"broken_cells/cfg{cfg:g}"] = float(curve.units.nunique() - len(ok))
            table = curve[curve.units.isin(ok)].pivot(index="row", columns="units", values="score")
            if table.shape[1] > 1:
                out |= {f"spearman/cfg{cfg:g}": within_row_spearman(table), f"slope/cfg{cfg:g}": ols_slope(table)}
    out["persists"] = float(np.mean(above))
    return out


def family_metrics(df: pd.DataFrame, checks: dict[str, float], calibrations: dict[str, Calibration],
                   cfgs: Sequence[float], prompts: int, n_boot: int, seed: int) -> dict[str, float]:
    """One source's numbers: the pixel checks (``w0_max_abs_diff`` also as its max over CFG scales), per schedule
    its calibrated dose (w_cal and the norm ratio it reached) and ``schedule_metrics``, and the base effect (the
    sweep's own w = 0 against the plain model)."""
    out = dict(checks)
    out["w0_max_abs_diff"] = max(v for k, v in checks.items() if k.startswith("w0_max_abs_diff/"))
    for name, cal in calibrations.items():
        out |= {f"{name}/w_cal": cal.w, f"{name}/w_cal_ratio": cal.ratio}
        out |= {f"{name}/{k}": v for k, v in schedule_metrics(df, name, cfgs, prompts, n_boot, seed).items()}
    first = next(iter(calibrations))
    for c in cfgs:
        out[f"base_effect/cfg{c:g}"] = arm_effect(reference(df, first, c), _cell(df, "plain", c), prompts,
                                                  n_boot, seed)[0]
    return out


def prompt_metrics(plain: pd.DataFrame, pplus: pd.DataFrame, cfgs: Sequence[float], prompts: int, n_boot: int,
                   seed: int) -> dict[str, float]:
    """The p+-in-the-prompt baseline against the plain model (its rows in ``plain``), per CFG with its CI."""
    out = {}
    for c in cfgs:
        mean, lo, hi = arm_effect(_cell(pplus, "p_plus_prompt", c), _cell(plain, "plain", c), prompts,
                                  n_boot, seed)
        out |= {f"p_plus_prompt/effect/cfg{c:g}": mean, f"p_plus_prompt/effect_lo/cfg{c:g}": lo,
                f"p_plus_prompt/effect_hi/cfg{c:g}": hi}
    return out


def dose_figure(df: pd.DataFrame, cfgs: Sequence[float], prompts: int, n_boot: int, seed: int):
    """One panel per (family, schedule), two per row: mean paired score change against w = 0 vs w in units of
    that schedule's calibrated dose (the headline at 1, shaded), one line per CFG scale with 95 % prompt-clustered
    CI bars; a broken cell (``BREAKDOWN_SHARE``) is drawn as a hollow red-edged marker, outside every claim;
    dashed: the p+-in-the-prompt baseline (against the plain model) at the same scale."""
    panels = df[df.arm == "guided"][["family", "schedule"]].drop_duplicates().to_numpy().tolist()
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = new_figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    for k, (family, schedule) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        sub = df[df.family.isin([family, "none"])]  # "none": the family-free p+ prompt baseline
        units = sorted(sub[(sub.arm == "guided") & (sub.schedule == schedule)].units.unique())
        ax.axvspan(0.9, 1.1, color="0.9", lw=0)
        for i, cfg in enumerate(cfgs):
            base = reference(sub, schedule, cfg)
            cells = [_cell(sub, "guided", cfg, schedule, u) for u in units]
            eff = np.array([arm_effect(c, base, prompts, n_boot, seed) for c in cells])  # (U, 3)
            ax.errorbar(units, eff[:, 0], yerr=[eff[:, 0] - eff[:, 1], eff[:, 2] - eff[:, 0]], color=f"C{i}",
                        marker="o", ms=3, capsize=2, label=f"CFG {cfg:g}")
            bad = [j for j, c in enumerate(cells) if broken(c)]
            ax.scatter(np.asarray(units)[bad], eff[bad, 0], s=60, facecolors="none", edgecolors="red", zorder=3)
            plain = _cell(sub, "plain", cfg)
            ax.axhline(arm_effect(_cell(sub, "p_plus_prompt", cfg), plain, prompts, n_boot, seed)[0]
                       - arm_effect(base, plain, prompts, n_boot, seed)[0], color=f"C{i}", ls="--", lw=0.8)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xticks(units, [f"{u:g}" for u in units])
        ax.set_title(f"{family} / {schedule}", fontsize=8)
        ax.set_xlabel("w / w_cal (shaded: the headline; red ring: broken cell)")
        if k % cols == 0:
            ax.set_ylabel("quality score change vs w = 0")
        ax.legend(fontsize=7, title="dashed: p+ in prompt", title_fontsize=6)
    return fig
