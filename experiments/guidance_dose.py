"""Does modulation guidance raise the toy quality score at its calibrated dose, at every CFG scale, for each family
and block schedule, before the images break down?

End to end on the toy world: each modulation source shipped in data/toyworld/ (or the positive control's own, run
with ``--model data/toyworld/positive_control/model``) steers toy prompts (content + artist, no quality tags) with
the proposal's p+ / p-. Per source and schedule the dose w_cal is calibrated first (``dose.calibrated_w``: the
modulation moves the velocity as far as p+/p- in the prompt do); the first schedule's curve is swept in units of
w_cal (-1: p+/p- swapped), the others are read at w_cal. The headline is the effect at w_cal over w = 0, with a
95 % CI over prompts and its MDE, beside the null of the same length: a quality-neutral tag pair
(``dose.NEUTRAL_PAIR``) pushed as far as p+/p- at w_cal on the swept schedule. A cell with more than
``dose.BREAKDOWN_SHARE`` of its images out of the scorer's range is broken and makes no claim. Mechanics and
definitions: ``anima_probe/guidance/dose.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from anima_probe.errors import UsageError
from anima_probe.guidance import dose, families
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.guided import pair_delta, prepare
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.schedules import Schedule
from anima_probe.model.clip import load_clip
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.pipeline.provenance import REPO_ROOT, sha256_file
from anima_probe.pipeline.samples import grid_figure

SHIPPED = {"projection": "data/toyworld/pooled_text_proj.safetensors",
           "cosmos_adapter": "data/toyworld/cosmos_pooled_adapter.safetensors", "clip": "data/toyworld/model/clip"}


@dataclass(frozen=True)
class GuidanceDoseConfig:
    seed: int = 0  # initial noise: row r of every cell starts from the same draw (paired comparisons)
    projection: str = "auto"  # a file of any family; auto: the shipped pooled_text_proj; none: skip it
    cosmos_adapter: str = "auto"  # a second file; auto: the shipped cosmos adapter *if it exists*; none: skip it
    clip: str = "auto"  # CLIP text model (file or folder), for a family that reads CLIP (cosmos)
    prompt_variant: str = "proposal"  # p+ / p-: the proposal's, or a variant of data/manifests/guidance_prompts
    prompts: int = 16  # toy prompts (content + artist): 16 cover all 8 contents and all 12 artists
    seeds: int = 2  # noise draws per prompt: rows = prompts x seeds; CIs resample prompts (clusters)
    # units of w_cal (-1: p+/p- swapped at w_cal). v5 dropped v4's 0.5: its cell pays for the null of the same length
    # inside the 5-CPU-minute budget, and the like-for-like dose is about half v4's, so 1 sits near v4's 0.5
    ws: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0, 4.0)
    cfgs: tuple[float, ...] = (1.0, 3.0, 5.0)  # ComfyUI scale (1 = no CFG)
    # Euler, shift below. v4: 6 steps, for issue 11's 5-CPU-minute budget (v3: 8). Mean plain-sample score of
    # these 32 rows at 5 / 6 / 8 / 12 steps: CFG 1 6.99 / 6.97 / 6.92 / 6.77, CFG 3 6.27 / 6.36 / 6.49 / 6.54
    steps: int = 6
    shift: float = 3.0
    # the first one's curve is swept over ws; the others (the port's default profile, a paper-style start-layer
    # step) are read at their own w_cal
    schedules: tuple[str, ...] = ("uniform", "sorryhyun", "step:2")
    calibration_rows: int = 8  # rows the dose is calibrated on (the first 8 prompts: every content, 8 artists)
    row_policy: str = "own"  # own: each family's port (per-row-base / official); or a CFGRowPolicy value
    negative: str = ""  # CFG negative prompt
    size: int = 32  # pixels (the toy world is pixel space)
    grid_columns: int = 3  # rows shown side by side in each cell of the image grid
    n_boot: int = 1000


def _path(value: str, key: str, optional: bool) -> Path | None:
    """auto -> the shipped file (None if optional and absent), none -> None, else the file, which must exist."""
    if value.lower() in ("none", ""):
        return None
    path = Path(SHIPPED[key] if value == "auto" else value)
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.exists():
        if value == "auto" and optional:
            return None
        raise FileNotFoundError(f"{key}={value!r}: {path} does not exist (set {key}=none to skip this family)")
    return path


def _sources(ctx: Context, cfg: GuidanceDoseConfig) -> tuple[list, str]:
    """[(source, clip or None)] and a csv of the files used with their sha256 (ties the numbers to these files)."""
    sources, files = [], []
    for key, optional in (("projection", False), ("cosmos_adapter", True)):
        if (path := _path(getattr(cfg, key), key, optional)) is None:
            continue
        source, clip = families.load_source(path, ctx.anima), None
        files.append((key, path))
        if families.family_of(source).needs_clip:
            clip_path = _path(cfg.clip, "clip", optional=False)
            clip = load_clip(clip_path, device=ctx.anima.device)
            files += [("clip", p) for p in ([clip_path] if clip_path.is_file() else sorted(clip_path.rglob("*")))
                      if p.is_file()]
        sources.append((source, clip))
    if not sources:
        raise ValueError("no modulation source: projection and cosmos_adapter are both none or absent")
    rows = [f"{role},{p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p},{sha256_file(p)}"
            for role, p in files]
    return sources, "\n".join(["role,path,sha256", *rows]) + "\n"


def guidance_dose(ctx: Context, cfg: GuidanceDoseConfig) -> Result:
    if ctx.anima.vae is None and ctx.anima.dit_config.out_channels != 3:
        raise ValueError("guidance-dose scores RGB images: load the model with its VAE (or use a pixel-space model)")
    schedules = [Schedule.parse(s) for s in cfg.schedules]
    if not schedules or not 2 <= cfg.calibration_rows <= cfg.prompts:
        raise UsageError(f"schedules={cfg.schedules} must name a schedule (the first one's curve is swept) and "
                         f"calibration_rows={cfg.calibration_rows} be in 2..prompts ({cfg.prompts})")
    sweep = dose.Sweep(cfg.ws, cfg.cfgs, cfg.steps, cfg.shift, schedules[0])
    guidance = load_prompt_sets()["guidance"]
    variants = {"proposal": guidance} | guidance["variants"]
    if cfg.prompt_variant not in variants:
        raise KeyError(f"prompt_variant={cfg.prompt_variant!r}: choose from {sorted(variants)}")
    pos, neg = variants[cfg.prompt_variant]["positive"], variants[cfg.prompt_variant]["negative"]
    prompts = dose.toy_prompts(cfg.prompts) * cfg.seeds  # row r: prompt r % prompts, noise row r
    noise = initial_noise(ctx.anima, len(prompts), cfg.size, cfg.seed)  # (B, C, h, w)
    sources, source_files = _sources(ctx, cfg)
    frames, metrics, figures, jitter = [], {}, {}, ["family,cfg,w0_batch_max_abs_diff"]
    bar = tqdm(total=len(sources) * (len(schedules) + len(cfg.cfgs)), desc="guidance-dose", disable=not ctx.progress)
    pplus, pplus_images = dose.prompt_baseline(ctx.anima, prompts, pos, cfg.negative, sweep, noise)
    plain = None  # the plain model's images, sampled with the first source (the same for every source)
    for source, clip in sources:
        family = families.family_of(source)
        gp = prepare(ctx.anima, source, prompts, pos, neg, cfg.negative, clip=clip)
        neutral = replace(gp, delta=pair_delta(ctx.anima, source, *dose.NEUTRAL_PAIR, clip=clip))
        policy = family.default_policy if cfg.row_policy == "own" else CFGRowPolicy(cfg.row_policy)
        calibrations = dose.calibrate_schedules(ctx.anima, gp, prompts, pos, neg, noise, sweep, schedules,
                                                cfg.calibration_rows, bar)
        cells = dose.arms(sweep, schedules, {n: c.w for n, c in calibrations.items()}, policy, family.every_block)
        df, checks, images = dose.sample_source(ctx.anima, gp, sweep, cells, policy, noise, plain, neutral, bar)
        plain = images[0]  # (len(cfgs), B, 3, H, W)
        df.insert(0, "family", family.name)
        # GEMM rounding at another batch size (~1e-6, machine- and thread-dependent): reported, never gated
        jitter += [f"{family.name},{k.split('/cfg')[1]},{checks.pop(k):.6g}" for k in list(checks) if "w0_batch" in k]
        metrics |= {f"{family.name}/{k}": v for k, v in dose.family_metrics(
            df, checks, calibrations, cfg.cfgs, cfg.prompts, cfg.n_boot, cfg.seed).items()}
        frames.append(df)
        j = slice(0, min(cfg.grid_columns, len(prompts)))
        rows = torch.cat([images[:1, :, j], pplus_images[None, :, j], images[1:, :, j]])  # (R, C, b, 3, H, W)
        figures[f"grid_{family.name}"] = grid_figure(
            rows, ["plain", "p+ in prompt"] + [f"{u:g} w_cal" for u in cfg.ws], [f"CFG {c:g}" for c in cfg.cfgs])
    bar.close()
    pplus.insert(0, "family", "none")
    # against the plain rows of one family (the same images for every family)
    metrics |= dose.prompt_metrics(frames[0], pplus, cfg.cfgs, cfg.prompts, cfg.n_boot, cfg.seed)
    df = pd.concat(frames + [pplus], ignore_index=True)
    df["prompt"] = [prompts[r] for r in df.row]
    figures["dose_response"] = dose.dose_figure(df, cfg.cfgs, cfg.prompts, cfg.n_boot, cfg.seed)
    lower = ("w0_max_abs_diff", "w0_vs_plain_max_abs_diff", "/broken", "broken_cells", "w_cal", "/mde/")
    higher = {k: not any(n in k for n in lower) for k in metrics}
    return Result(metrics=metrics, higher_is_better=higher, figures=figures,
                  tables={"scores.csv": df.to_csv(index=False, float_format="%.6g"), "sources.csv": source_files,
                          "w0_batch_jitter.csv": "\n".join(jitter) + "\n"})


EXPERIMENT = Experiment(
    name="guidance-dose", version="5", config=GuidanceDoseConfig, fn=guidance_dose, needs_dit=True,
    needs_images=True,
    question="Does modulation guidance with the proposal's quality p+/p- raise the toy quality score at its calibrated "
    "dose, at every CFG scale and block schedule, before the images break down, and is w = 0 exactly the base model?")
