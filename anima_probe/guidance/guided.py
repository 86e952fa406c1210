"""What does Anima draw under modulation guidance (Eq. 3), at which weight, per block, and on top of which CFG?

The guided sampler: the pure samplers of ``samplers.py`` (Euler, ER-SDE, the shift schedule, the CFG velocity) run
the DiT under ``modulation.inject``. The vectors follow Eq. 3 per block,

    y_i(row) = P(base_row) + w(i) * (P(p+) - P(p-))

with P the family's projection (``families.py``, for any registered family), w(i) a block schedule
(``schedules.py``), and what the CFG *uncond* row gets decided by an explicit ``CFGRowPolicy`` (``eq3.py``: both /
cond-only / official / per-row-base). Everything that does not depend on w, CFG or the seed -- text encoding,
pooling, every projection, the guidance delta -- is computed ONCE per prompt set (``prepare`` -> ``GuidedPrompts``);
a step or a grid cell only adds precomputed vectors. Figures and run folders of a grid: ``pipeline/samples.py``.

Sweeps (w x CFG x seeds) are cheap by construction: ``sample_cells`` runs many (guidance, CFG) cells per DiT call
(as many as a device does fastest, ``call_shape``), each row with its own vectors and its own CFG scale, from
the same initial noise (paired comparisons).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from anima_probe.errors import InputError
from anima_probe.guidance import families
from anima_probe.guidance.eq3 import CFGRowPolicy, row_vectors, uncond_base_prompt
from anima_probe.guidance.families import guidance_delta
from anima_probe.guidance.modulation import Modulation, build, inject
from anima_probe.guidance.samplers import (
    SAMPLERS,
    STOCHASTIC,
    cfg_combine,
    cfg_velocity,
    initial_noise,
    sample_euler,
    simple_sigmas,
)
from anima_probe.guidance.schedules import Schedule
from anima_probe.guidance.sigmas import schedule_sigmas
from anima_probe.guidance.spectrum import Spectrum, SpectrumConfig
from anima_probe.model.text import encode_prompts


# ------------------------------------------------------------------------------- one setting of Eq. 3
@dataclass(frozen=True)
class Guidance:
    """One setting of Eq. 3: weight, block schedule, final-layer weight (pooled_text_proj only; sorryhyun's
    final_w) and the CFG-row policy (None: the family's own port, ``Family.default_policy``)."""

    w: float = 3.0
    schedule: Schedule = Schedule()
    final_w: float = 0.0
    row_policy: CFGRowPolicy | str | None = None

    def policy(self, family: str) -> CFGRowPolicy:
        return families.get(family).default_policy if self.row_policy is None else CFGRowPolicy(self.row_policy)


# ------------------------------------------------------------------------------- once per prompt set
@dataclass
class GuidedPrompts:
    """Everything a guided sample needs that does not depend on w, CFG or the seed (B prompts)."""

    family: str
    cond_ctx: torch.Tensor  # (B, 512, Dt) crossattn_emb of the prompts
    uncond_ctx: torch.Tensor  # (B, 512, Dt) crossattn_emb of the CFG negative
    base_cond: torch.Tensor  # (B, W) P(pooled prompt)
    base_uncond: dict[str, torch.Tensor]  # policy value -> (B, W): P(CFG negative) and/or P("")
    delta: torch.Tensor  # (1, W) P(p+) - P(p-), computed once
    scales: torch.Tensor | None  # (N, W) the source's per-block scales (cosmos); None for a family without

    def __len__(self) -> int:
        return self.cond_ctx.shape[0]

    def rows(self, index: slice) -> GuidedPrompts:
        """The prompts ``index`` selects (the delta and the adapter's scales are shared by every row)."""
        return replace(self, cond_ctx=self.cond_ctx[index], uncond_ctx=self.uncond_ctx[index],
                       base_cond=self.base_cond[index], base_uncond={k: v[index] for k, v in self.base_uncond.items()})


def prepare(anima, source, prompts: list[str], pos: str, neg: str, negative: str = "", *, clip=None,
            pooling: str = "max_padded") -> GuidedPrompts:
    """Once per prompt set, for a source of any family: each text encoded once, every base projected in one call,
    the delta once (never per step or cell).

    The prompts, the CFG negative and "" (the official uncond base) are encoded together: the DiT's cross-attention
    reads their ``crossattn_emb``, and the family pools its input from that same encoding (``pooled_text_proj``:
    ``pooling``, sorryhyun's ``max_padded`` over all 512 rows) or from CLIP-L (``cosmos``: ``clip``; Eq. 3 changes
    only y, the DiT still reads Anima's own encoding). p+ and p- are encoded as their own pair, so the delta does
    not depend on the prompts it is sampled with (float32 encodings round differently in another batch).
    """
    fam = families.family_of(source)
    fam.check(source, anima)
    fam.require_clip(clip)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    B = len(prompts)
    uncond_texts = {p.value: uncond_base_prompt(p, negative) for p in CFGRowPolicy}  # None: unused (both)
    texts = prompts + sorted({negative, *(t for t in uncond_texts.values() if t is not None)} - set(prompts))
    row = {t: i for i, t in enumerate(texts)}
    tc = encode_prompts(anima, texts)
    source = source.to(anima.device)
    with torch.no_grad():
        bases = fam.project(source, fam.pool(texts, tc, clip, pooling).to(anima.device))  # (B + E, W): one call
    delta = pair_delta(anima, source, pos, neg, clip=clip, pooling=pooling)
    base_uncond = {k: bases[row[t]].expand(B, -1) for k, t in uncond_texts.items() if t is not None}
    scales = None if fam.block_scales is None else fam.block_scales(source).detach()  # no graph while sampling
    ctx = tc.crossattn_emb  # (B + E, 512, Dt)
    return GuidedPrompts(fam.name, ctx[:B], ctx[row[negative]].expand(B, -1, -1), bases[:B], base_uncond, delta,
                         scales)


def pair_delta(anima, source, pos: str, neg: str, *, clip=None, pooling: str = "max_padded") -> torch.Tensor:
    """(1, W) ``P(p+) - P(p-)`` with the source's projection. p+ and p- are encoded as their own pair, so the delta
    does not depend on the prompts it is sampled with. Another pair on the same prompts is
    ``replace(gp, delta=pair_delta(...))``: the prompts are not encoded again."""
    fam = families.family_of(source)
    with torch.no_grad():
        pooled = fam.pool([pos, neg], encode_prompts(anima, [pos, neg]), clip, pooling).to(anima.device)  # (2, P)
        return guidance_delta(source.to(anima.device), *pooled.chunk(2))


# ------------------------------------------------------------------------------- per (guidance, CFG) cell
def modulation_for(gp: GuidedPrompts, guidance: Guidance, num_blocks: int, cfg: bool = True) -> Modulation:
    """The vectors of one cell: rows [cond (B); uncond (B)] with CFG, cond rows only without."""
    fam = families.get(gp.family)
    if fam.final_arg is None and guidance.final_w:
        touching = "/".join(f.name for f in families.REGISTRY.values() if f.final_arg is not None)
        raise InputError(f"final_w applies to family {touching} (it modulates the final layer); family "
                         f"{fam.name!r} leaves the final layer alone")
    policy = guidance.policy(gp.family)
    base_uncond = gp.base_uncond.get(policy.value)
    B = len(gp)

    def rows(w: float) -> torch.Tensor:  # (2B or B, W)
        cond, uncond = row_vectors(policy, gp.base_cond, base_uncond, gp.delta, w)
        return torch.cat([cond.expand(B, -1), uncond.expand(B, -1)]) if cfg else cond.expand(B, -1)

    weights = guidance.schedule.weights(num_blocks, guidance.w)
    return build(gp.family, rows, weights, final_weight=guidance.final_w, active=guidance.schedule.active(num_blocks),
                 scales=gp.scales)


def _dense(mod: Modulation, zeros: torch.Tensor, with_final: bool) -> Modulation:
    """``zeros`` (R, W) where a cell leaves a block alone (x + 0 is exact), so cells with different schedules (or
    none) share one batch."""
    final = (zeros if mod.final is None else mod.final) if with_final else None
    return Modulation(mod.family, tuple(zeros if v is None else v for v in mod.blocks), final)


def _cells_modulation(anima, gp: GuidedPrompts, guidances: Sequence[Guidance | None], cfg: bool) -> Modulation | None:
    if all(g is None for g in guidances):
        return None  # plain CFG sampling: no hooks at all
    mods = [None if g is None else modulation_for(gp, g, anima.num_blocks, cfg) for g in guidances]
    if None not in mods and len({(tuple(m.touched), m.final is not None) for m in mods}) == 1:
        return Modulation.cat(mods)
    zeros = gp.base_cond.new_zeros(len(gp) * (2 if cfg else 1), gp.base_cond.shape[-1])  # (R, W)
    with_final = any(m is not None and m.final is not None for m in mods)
    return Modulation.cat([_dense(m or Modulation(gp.family, (None,) * anima.num_blocks), zeros, with_final)
                           for m in mods])


# ------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Cell:
    """One grid cell: a guidance setting (None: no modulation at all, plain CFG) and a CFG scale (1: no CFG).
    The scale follows ComfyUI/diffusers (``sampling.cfg_combine``); the official Cosmos ``cfg`` is scale - 1."""

    guidance: Guidance | None
    cfg: float = 1.0


def _run_chunk(anima, gp, cells, noise, sigmas, sampler, seed, progress, spectrum=None) -> torch.Tensor:
    """K cells side by side in one batch (K*B, C, h, w); with CFG one DiT call on [cond; uncond] per cell."""
    model = anima.velocity if spectrum is None else Spectrum(anima, len(sigmas) - 1, spectrum).model
    velocity = cfg_velocity(model, gp.cond_ctx, gp.uncond_ctx, [c.cfg for c in cells])
    cfg = any(c.cfg != 1.0 for c in cells)  # whether the uncond rows run, so the vectors need them
    mod = _cells_modulation(anima, gp, [c.guidance for c in cells], cfg)
    x = noise.to(anima.device).repeat(len(cells), 1, 1, 1)  # (K*B, C, h, w): every cell starts from the same noise
    with inject(anima, mod) if mod is not None else contextlib.nullcontext():
        if sampler not in STOCHASTIC:
            x = SAMPLERS[sampler](velocity, x, sigmas, disable=not progress)
        else:
            g = torch.Generator(device=anima.device).manual_seed(seed)
            x = SAMPLERS[sampler](velocity, x, sigmas, generator=g, disable=not progress)
    return x.view(len(cells), len(gp), *x.shape[1:])  # (K, B, C, h, w)


# A toy DiT row costs the CPU ~1.8x more inside one 256-row call than inside calls of 16 rows: the activations of a
# big call fall out of the caches (benchmarks/dit_call.py, reports/benchmarks/dit-call.json). On a CPU the cells
# (or, for a cell larger than this, its prompts) are batched up to this many rows per call; a GPU takes all at once.
CPU_ROWS_PER_CALL = 16


def call_shape(anima, cells: Sequence[Cell], prompts: int) -> tuple[int, int]:
    """(cells, prompts) per DiT call for ``cells`` of ``prompts`` rows each (with CFG a prompt is 2 rows)."""
    if anima.device.type != "cpu":
        return len(cells), prompts
    per_prompt = 2 if any(c.cfg != 1.0 for c in cells) else 1
    if prompts * per_prompt > CPU_ROWS_PER_CALL:
        return 1, max(1, CPU_ROWS_PER_CALL // per_prompt)
    return max(1, CPU_ROWS_PER_CALL // (prompts * per_prompt)), prompts


def sample_cells(anima, gp: GuidedPrompts, cells: Sequence[Cell], noise: torch.Tensor, *, steps: int = 20,
                 shift: float = 3.0, sampler: str = "euler", seed: int = 0, chunk: int | None = None,
                 progress: bool = False, schedule: str = "simple", spectrum: SpectrumConfig | None = None,
                 ) -> torch.Tensor:
    """Final samples (K, B, C, h, w) in model space for K cells from the same initial noise (B, C, h, w).

    ``sampler`` names one of ``samplers.SAMPLERS``, ``schedule`` one of ``sigmas.SCHEDULES``; ``spectrum`` runs
    the DiT through ``Spectrum`` with that config (a fresh forecaster per call). Deterministic samplers batch
    cells ``chunk`` at a time with all prompts (default: ``call_shape``, which may also split the prompts: a row's
    path does not depend on the others'). The stochastic ones inject noise drawn for the whole batch,
    so each cell runs alone with a generator seeded by ``seed``: every cell then sees the same SDE noise (paired)
    and a cell reproduces bit for bit whatever grid it sits in.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    if noise.shape[0] != len(gp):
        raise InputError(f"noise has {noise.shape[0]} rows for {len(gp)} prompts")
    sigmas = schedule_sigmas(schedule, steps, shift)
    if sampler in STOCHASTIC:
        size, group = 1, len(gp)
    else:
        size, group = (chunk, len(gp)) if chunk else call_shape(anima, cells, len(gp))
    parts = [torch.cat([_run_chunk(anima, gp.rows(slice(r, r + group)), cells[i : i + size], noise[r : r + group],
                                   sigmas, sampler, seed, progress, spectrum) for r in range(0, len(gp), group)],
                       dim=1) for i in range(0, len(cells), size)]  # each (k, B, C, h, w)
    return torch.cat(parts)


def sample_guided(anima, gp: GuidedPrompts, guidance: Guidance | None, cfg: float, noise: torch.Tensor,
                  **kwargs) -> torch.Tensor:
    """One setting: (B, C, h, w) final samples; ``guidance=None`` is plain (CFG) sampling with no hooks."""
    return sample_cells(anima, gp, [Cell(guidance, cfg)], noise, **kwargs)[0]


def sample_grid(anima, gp: GuidedPrompts, ws: Sequence[float | None], cfgs: Sequence[float], guidance: Guidance,
                noise: torch.Tensor, **kwargs) -> torch.Tensor:
    """Images (len(ws), len(cfgs), B, 3, H, W) in [0, 1]: ``guidance`` with w replaced along the rows (None: no
    modulation at all) and the CFG scale along the columns, every cell from the same noise."""
    cells = [Cell(None if w is None else replace(guidance, w=float(w)), float(c)) for w in ws for c in cfgs]
    x = sample_cells(anima, gp, cells, noise, **kwargs)  # (R*C, B, C, h, w)
    with torch.no_grad():
        images = anima.decode(x.flatten(0, 1))  # (R*C*B, 3, H, W)
    return images.view(len(ws), len(cfgs), len(gp), *images.shape[1:])


@torch.no_grad()
def sample_prompts(anima, prompts: Sequence[str], seed: int, *, steps: int = 20, cfg: float = 4.0,
                   shift: float = 3.0, size: int = 32, negative: str = "", progress: bool = False,
                   row_context: Callable | None = None) -> np.ndarray:
    """Plain CFG samples of ``prompts`` (no modulation), Euler over the shift schedule, as (N, H, W, 3) in [0, 1].

    One noise draw per call (``initial_noise(seed)``), so two calls with the same seed and as many prompts pair
    row r with row r (the p+/p- pairs of toyworld-evidence, base vs adapter in the 13th-artist evaluation).
    ``row_context`` (optional) is called once with the encoded prompts + negative and returns ``uncond -> a
    context`` opened around the cond (False) and the uncond (True) forward: a model with its own pooled-text path
    (the toy positive control) adds each row's vector there."""
    tc = encode_prompts(anima, list(prompts) + [negative])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)  # (N, 512, Dt)
    if row_context is None:
        velocity = cfg_velocity(anima.velocity, cond, uncond, cfg)
    else:
        around = row_context(tc)

        def velocity(x_t, s):  # the two rows under their own contexts, so two forwards
            with around(False):
                v_cond = anima.velocity(x_t, s, cond)
            with around(True):
                v_uncond = anima.velocity(x_t, s, uncond)
            return cfg_combine(v_cond, v_uncond, cfg)
    x = initial_noise(anima, len(prompts), size, seed).to(anima.device, anima.dtype)  # (N, C, h, w)
    x0 = sample_euler(velocity, x, simple_sigmas(steps, shift), disable=not progress)
    return anima.decode(x0).float().permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
