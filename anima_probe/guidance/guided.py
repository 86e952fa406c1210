"""What does Anima draw under modulation guidance (Eq. 3), at which weight, per block, and on top of which CFG?

The guided sampler: the pure samplers of ``sampling.py`` (Euler, ER-SDE, the shift schedule, CFG) run a velocity
function whose DiT calls go through ``guidance.inject``. The vectors follow Eq. 3 per block,

    y_i(row) = P(base_row) + w(i) * (P(p+) - P(p-))

with P the family's projection (``modulation.py``), w(i) a block schedule, and what the CFG *uncond* row gets decided
by an explicit ``CFGRowPolicy`` (both / cond-only / official / per-row-base). Everything that does not depend on w,
CFG or the seed -- text encoding, pooling, every projection, the guidance delta -- is computed ONCE per prompt set
(``prepare_*`` -> ``GuidedPrompts``); a step or a grid cell only adds precomputed vectors.

Sweeps (w x CFG x seeds) are cheap by construction: ``sample_cells`` runs many (guidance, CFG) cells as one batch,
each row with its own vectors and its own CFG scale, from the same initial noise (paired comparisons).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from anima_probe.guidance.modulation import COSMOS, POOLED_TEXT_PROJ, Modulation, build, inject
from anima_probe.guidance.samplers import cfg_combine, sample_er_sde, sample_euler, simple_sigmas
from anima_probe.guidance.sources import (
    PROFILES,
    CFGRowPolicy,
    CosmosPooledAdapter,
    PooledTextProjection,
    block_weights,
    guidance_delta,
    load_cosmos_pooled_adapter,
    load_pooled_text_proj,
    profile,
    project_pooled,
    row_vectors,
    uncond_base_prompt,
)
from anima_probe.model.files import ModelFileError, tensor_shapes
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.atomic import atomic_write_bytes, atomic_write_json
from anima_probe.pipeline.figures import new_figure, save_figure
from anima_probe.pipeline.rundirs import new_run_dir
from anima_probe.probes.pooling import pool_named

SAMPLERS = ("euler", "er_sde")
DEFAULT_POLICY = {POOLED_TEXT_PROJ: CFGRowPolicy.PER_ROW_BASE, COSMOS: CFGRowPolicy.OFFICIAL}  # each port's own
_INTERVAL = re.compile(r"^interval:(-?\d+):(-?\d+)([\])])$")


# ------------------------------------------------------------------------------- which blocks get w
@dataclass(frozen=True)
class Schedule:
    """w(i) over blocks, with the end convention spelled out: ``uniform`` (every block), ``step`` (blocks >=
    start), ``interval`` (start..end, ``end_inclusive`` required: Anzhc inclusive, sorryhyun exclusive), or a named
    ``profile`` from ``modulation.PROFILES`` (depth-mapped onto the model). Text form (``parse``): ``uniform``,
    ``step:8``, ``interval:8:26]`` (inclusive), ``interval:8:27)`` (exclusive), or a profile name."""

    kind: str = "uniform"
    start: int = 0
    end: int | None = None
    end_inclusive: bool | None = None
    profile: str | None = None

    def weights(self, num_blocks: int, w: float) -> torch.Tensor:
        """(N,) float32 w(i)."""
        if self.kind == "profile":
            return profile(self.profile, num_blocks, w)
        return block_weights(num_blocks, w, self.kind, self.start, self.end, end_inclusive=self.end_inclusive)

    def active(self, num_blocks: int) -> torch.Tensor:
        """(N,) bool: the blocks the schedule names (family cosmos leaves the others at the plain temb)."""
        return self.weights(num_blocks, 1.0) != 0

    def text(self) -> str:
        if self.kind == "profile":
            return self.profile
        if self.kind == "interval":
            return f"interval:{self.start}:{self.end}{']' if self.end_inclusive else ')'}"
        return "uniform" if self.kind == "uniform" else f"step:{self.start}"

    @staticmethod
    def parse(text: str) -> Schedule:
        if text == "uniform":
            return Schedule()
        if m := re.fullmatch(r"step:(-?\d+)", text):
            return Schedule("step", int(m.group(1)))
        if m := _INTERVAL.match(text):
            return Schedule("interval", int(m.group(1)), int(m.group(2)), m.group(3) == "]")
        if text in PROFILES:
            return Schedule("profile", profile=text)
        raise ValueError(f"unknown schedule {text!r}: use uniform, step:START, interval:START:END] (end inclusive), "
                         f"interval:START:END) (end exclusive), or a profile {sorted(PROFILES)}")


@dataclass(frozen=True)
class Guidance:
    """One setting of Eq. 3: weight, block schedule, final-layer weight (pooled_text_proj only; sorryhyun's
    final_w) and the CFG-row policy (None: the family's own port, ``DEFAULT_POLICY``)."""

    w: float = 3.0
    schedule: Schedule = Schedule()
    final_w: float = 0.0
    row_policy: CFGRowPolicy | str | None = None

    def policy(self, family: str) -> CFGRowPolicy:
        return DEFAULT_POLICY[family] if self.row_policy is None else CFGRowPolicy(self.row_policy)


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
    scales: torch.Tensor | None  # (N, 3D) the cosmos adapter's per-block scales; None for pooled_text_proj

    def __len__(self) -> int:
        return self.cond_ctx.shape[0]


def _prepare(family: str, source, pooled_fn: Callable[[list[str]], torch.Tensor], prompts: list[str], pos: str,
             neg: str, negative: str, anima) -> GuidedPrompts:
    """Shared by both families: one text encoding, one projection of the bases, one delta (never per step)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tc = encode_prompts(anima, prompts + [negative])
    B = len(prompts)
    uncond_texts = {p.value: uncond_base_prompt(p, negative) for p in CFGRowPolicy}  # None: unused (both)
    extra = sorted({t for t in uncond_texts.values() if t is not None} - set(prompts))
    pooled = pooled_fn(prompts + extra)  # (B + E, Dp)
    source = source.to(anima.device)
    with torch.no_grad():
        bases = project_pooled(source, pooled)  # (B + E, W): one call for every base vector
        delta = guidance_delta(source, *pooled_fn([pos, neg]).chunk(2))  # (1, W): P(p+) - P(p-)
    row = {t: bases[B + i] for i, t in enumerate(extra)} | {p: bases[i] for i, p in enumerate(prompts)}
    base_uncond = {k: row[t].expand(B, -1) for k, t in uncond_texts.items() if t is not None}
    scales = source.scales.detach() if family == COSMOS else None  # (N, 3D); no autograd graph while sampling
    return GuidedPrompts(family, tc.crossattn_emb[:B], tc.crossattn_emb[B:].expand(B, -1, -1), bases[:B],
                         base_uncond, delta, scales)


def prepare_pooled_text(anima, proj: PooledTextProjection, prompts: list[str], pos: str, neg: str,
                        negative: str = "", pooling: str = "max_padded") -> GuidedPrompts:
    """Family (a): P = ``pooled_text_proj`` on max-pooled ``crossattn_emb`` (sorryhyun pools over all 512 rows,
    padding included: ``max_padded``)."""
    if proj.sigma_film is not None:
        raise ValueError("this pooled_text_proj has sigma-FiLM armed: its delta depends on the step's t_emb, which "
                         "the once-per-prompt guided sampler does not support (the author reports FiLM inert)")

    def pooled_fn(texts: list[str]) -> torch.Tensor:
        tc = encode_prompts(anima, texts)
        return pool_named(tc.crossattn_emb, tc.t5_mask, pooling)  # (N, Dt)

    return _prepare(POOLED_TEXT_PROJ, proj, pooled_fn, prompts, pos, neg, negative, anima)


def prepare_cosmos(anima, adapter: CosmosPooledAdapter, clip, prompts: list[str], pos: str, neg: str,
                   negative: str = "") -> GuidedPrompts:
    """Family (b): P = the official adapter's text projection on CLIP-L ``pooler_output`` (``clip.ClipText``);
    the DiT's cross-attention still reads Anima's own ``crossattn_emb`` of the prompt (Eq. 3 changes only y)."""
    if adapter.num_blocks != anima.num_blocks or adapter.model_channels != anima.dit_config.hidden:
        raise ValueError(f"cosmos adapter is for {adapter.num_blocks} blocks x D={adapter.model_channels}, the model "
                         f"has {anima.num_blocks} x {anima.dit_config.hidden}")
    return _prepare(COSMOS, adapter, lambda texts: clip.pooled(texts).to(anima.device), prompts, pos, neg,
                    negative, anima)


# ------------------------------------------------------------------------------- per (guidance, CFG) cell
def modulation_for(gp: GuidedPrompts, guidance: Guidance, num_blocks: int, cfg: bool = True) -> Modulation:
    """The vectors of one cell: rows [cond (B); uncond (B)] with CFG, cond rows only without."""
    policy = guidance.policy(gp.family)
    base_uncond = gp.base_uncond.get(policy.value)
    B = len(gp)

    def rows(w: float) -> torch.Tensor:  # (2B or B, W)
        cond, uncond = row_vectors(policy, gp.base_cond, base_uncond, gp.delta, w)
        return torch.cat([cond.expand(B, -1), uncond.expand(B, -1)]) if cfg else cond.expand(B, -1)

    weights = guidance.schedule.weights(num_blocks, guidance.w)
    if gp.family == POOLED_TEXT_PROJ:
        return build(POOLED_TEXT_PROJ, rows, weights, final_weight=guidance.final_w)
    if guidance.final_w:
        raise ValueError("final_w applies to family pooled_text_proj; the official cosmos path leaves norm_out alone")
    return build(COSMOS, rows, weights, final_weight=None, active=guidance.schedule.active(num_blocks),
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


def initial_noise(anima, batch: int, size: int, seed: int) -> torch.Tensor:
    """(B, C, h, w) float32 N(0, 1) from a CPU generator (the same seed gives the same noise on any device);
    ``size`` is the image side in pixels (h = size / 8 with a VAE, = size in the pixel-space toy world)."""
    side = size // 8 if anima.vae is not None else size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, anima.dit_config.in_channels, side, side, generator=g)


def _velocity_fn(anima, gp: GuidedPrompts, cells: Sequence[Cell]):
    """velocity(x (K*B, ...), sigma) for K cells side by side; with CFG one DiT call on [cond; uncond] per cell."""
    K, B = len(cells), len(gp)
    if all(c.cfg == 1.0 for c in cells):
        ctx = gp.cond_ctx.repeat(K, 1, 1)  # (K*B, 512, Dt)
        return lambda x, sigma: anima.velocity(x, sigma[:1], ctx), False
    ctx = torch.cat([gp.cond_ctx, gp.uncond_ctx]).repeat(K, 1, 1)  # (K*2B, 512, Dt): per cell [cond; uncond]
    scale = torch.tensor([c.cfg for c in cells], device=anima.device).view(K, 1, 1, 1, 1)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        x2 = x.view(K, 1, B, *shape).expand(K, 2, B, *shape).reshape(K * 2 * B, *shape)  # (K*2B, C, h, w)
        v = anima.velocity(x2, sigma[:1], ctx).float().view(K, 2, B, *shape)
        return cfg_combine(v[:, 0], v[:, 1], scale).reshape(K * B, *shape)  # (K*B, C, h, w)

    return velocity, True


def _run_chunk(anima, gp, cells, noise, sigmas, sampler, seed, progress) -> torch.Tensor:
    velocity, cfg = _velocity_fn(anima, gp, cells)
    mod = _cells_modulation(anima, gp, [c.guidance for c in cells], cfg)
    x = noise.to(anima.device).repeat(len(cells), 1, 1, 1)  # (K*B, C, h, w): every cell starts from the same noise
    with inject(anima, mod) if mod is not None else contextlib.nullcontext():
        if sampler == "euler":
            x = sample_euler(velocity, x, sigmas, disable=not progress)
        else:
            g = torch.Generator(device=anima.device).manual_seed(seed)
            x = sample_er_sde(velocity, x, sigmas, generator=g, disable=not progress)
    return x.view(len(cells), len(gp), *x.shape[1:])  # (K, B, C, h, w)


def sample_cells(anima, gp: GuidedPrompts, cells: Sequence[Cell], noise: torch.Tensor, *, steps: int = 20,
                 shift: float = 3.0, sampler: str = "euler", seed: int = 0, chunk: int | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Final samples (K, B, C, h, w) in model space for K cells from the same initial noise (B, C, h, w).

    Euler is deterministic, so cells are batched ``chunk`` at a time (default: all at once). ER-SDE injects noise
    drawn for the whole batch, so each cell runs alone with a generator seeded by ``seed``: every cell then sees the
    same SDE noise (paired) and a cell reproduces bit for bit whatever grid it sits in.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if noise.shape[0] != len(gp):
        raise ValueError(f"noise has {noise.shape[0]} rows for {len(gp)} prompts")
    sigmas = simple_sigmas(steps, shift)
    size = 1 if sampler == "er_sde" else (chunk or len(cells))
    parts = [_run_chunk(anima, gp, cells[i : i + size], noise, sigmas, sampler, seed, progress)
             for i in range(0, len(cells), size)]
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


# ------------------------------------------------------------------------------- files, grids, run folders
def load_source(path, anima) -> PooledTextProjection | CosmosPooledAdapter:
    """Either family's file, told apart by its keys (``0.weight``: pooled_text_proj; ``scales``: the official
    cosmos adapter, .pt or .safetensors), checked against the model's width and depth."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such modulation file")
    if path.suffix == ".safetensors":
        keys = set(tensor_shapes(path))
        if "0.weight" in keys:
            return load_pooled_text_proj(path, model_channels=anima.dit_config.hidden)
        if "scales" not in keys:
            raise ModelFileError(f"{path}: neither a pooled_text_proj (key '0.weight') nor a cosmos adapter "
                                      f"(key 'scales'); keys: {sorted(keys)[:6]}")
    return load_cosmos_pooled_adapter(path, anima.dit_config.hidden, anima.num_blocks)


def family_of(source) -> str:
    return COSMOS if isinstance(source, CosmosPooledAdapter) else POOLED_TEXT_PROJ


def grid_figure(images: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str]):
    """images (R, C, B, 3, H, W) in [0, 1] -> a figure: rows = guidance settings, columns = CFG scales, the B
    prompts side by side inside each cell."""
    R, C, B = images.shape[:3]
    fig = new_figure(figsize=(1.1 * B * C + 0.8, 1.2 * R + 0.6))
    for r in range(R):
        for c in range(C):
            ax = fig.add_subplot(R, C, r * C + c + 1)
            strip = images[r, c].permute(2, 0, 3, 1).reshape(images.shape[-2], -1, images.shape[3])  # (H, B*W, 3)
            ax.imshow(strip.cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    return fig


def write_sample_run(root, images: torch.Tensor, settings: dict, figure) -> Path:
    """A numbered run folder ``root/NNN-sample/`` with grid.png, images.npy ((R, C, B, H, W, 3) uint8) and
    settings.json (everything needed to re-run the grid)."""
    run_dir = new_run_dir(root, "sample")
    save_figure(figure, run_dir / "grid.png")
    buf = io.BytesIO()
    np.save(buf, (images.permute(0, 1, 2, 4, 5, 3) * 255).round().to(torch.uint8).cpu().numpy())
    atomic_write_bytes(run_dir / "images.npy", buf.getvalue())
    atomic_write_json(run_dir / "settings.json", settings)
    return run_dir
