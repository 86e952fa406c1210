"""Does modulation guidance raise the toy quality score with its weight, at every CFG scale, for each family?

End to end on the toy world: the distilled projection(s) shipped in data/toyworld/ steer samples of toy prompts
(content + artist, no quality tags) with the proposal's quality p+ / p-; a w x CFG grid from shared noise is scored
by ``toyworld.scorer.quality_score``. Reported per family and row policy: the dose-response (within-row Spearman,
slope), the effect score(w_max) - score(0) at each CFG with a bootstrap CI, the p+-in-the-prompt baseline, and
``w0_max_abs_diff`` (w = 0 against a hand-written sampler of the base-projection model; must be exactly 0).
Mechanics and definitions: ``anima_probe/guidance/dose.py``.

Run: ``anima-probe run guidance-dose`` (both families when their files exist; ``cosmos_adapter=none`` skips (b)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from anima_probe.guidance import dose, families
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.guided import prepare
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
    prompts: int = 4  # toy prompts (content + artist)
    seeds: int = 2  # noise draws per prompt: rows = prompts x seeds
    ws: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    cfgs: tuple[float, ...] = (1.0, 3.0, 5.0)  # ComfyUI scale (1 = no CFG)
    steps: int = 8  # Euler, shift below (toy plain-sample scores: 6.55 at 8 steps, 6.60 at 12, 6.62 at 20)
    shift: float = 3.0
    schedule: str = "uniform"  # every block, as the proposal's single add after t_embedding_norm
    row_policy: str = "own"  # own: each family's port (per-row-base / official); or a CFGRowPolicy value
    contrast_policy: str = "auto"  # second policy at (0, w_max): auto = the one with the other CFG algebra; none
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
    """[(source, clip or None)] and a csv of the files used with their sha256 (the run record hashes only the
    model's own files, so this is what ties the numbers to these projections)."""
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


def _policies(family: str, cfg: GuidanceDoseConfig) -> tuple[CFGRowPolicy, CFGRowPolicy | None]:
    own = families.get(family).default_policy if cfg.row_policy == "own" else CFGRowPolicy(cfg.row_policy)
    if cfg.contrast_policy == "none":
        return own, None
    return own, dose.CONTRAST_POLICY[own] if cfg.contrast_policy == "auto" else CFGRowPolicy(cfg.contrast_policy)


def guidance_dose(ctx: Context, cfg: GuidanceDoseConfig) -> Result:
    if ctx.anima.vae is None and ctx.anima.dit_config.out_channels != 3:
        raise ValueError("guidance-dose scores RGB images: load the model with its VAE (or use a pixel-space model)")
    sweep = dose.Sweep(cfg.ws, cfg.cfgs, cfg.steps, cfg.shift, Schedule.parse(cfg.schedule))
    guidance = load_prompt_sets()["guidance"]
    variants = {"proposal": guidance} | guidance["variants"]
    if cfg.prompt_variant not in variants:
        raise KeyError(f"prompt_variant={cfg.prompt_variant!r}: choose from {sorted(variants)}")
    pos, neg = variants[cfg.prompt_variant]["positive"], variants[cfg.prompt_variant]["negative"]
    prompts = dose.toy_prompts(cfg.prompts) * cfg.seeds  # row r: prompt r % prompts, noise row r
    noise = initial_noise(ctx.anima, len(prompts), cfg.size, cfg.seed)  # (B, C, h, w)
    sources, source_files = _sources(ctx, cfg)
    frames, metrics, figures, jitter = [], {}, {}, ["family,cfg,w0_batch_max_abs_diff"]
    bar = tqdm(total=len(sources) * len(cfg.cfgs), desc="guidance-dose", disable=not ctx.progress)
    pplus, pplus_images = dose.prompt_baseline(ctx.anima, prompts, pos, cfg.negative, sweep, noise)
    for source, clip in sources:
        fam = families.family_of(source).name
        gp = prepare(ctx.anima, source, prompts, pos, neg, cfg.negative, clip=clip)
        policies = _policies(fam, cfg)
        df, checks, images = dose.sample_source(ctx.anima, gp, sweep, *policies, noise, progress=bar)
        df.insert(0, "family", fam)
        # GEMM rounding at another batch size (~1e-6, machine- and thread-dependent): reported, never gated
        jitter += [f"{fam},{k.split('/cfg')[1]},{checks.pop(k):.6g}" for k in list(checks) if "w0_batch" in k]
        metrics |= {f"{fam}/{k}": v for k, v in dose.family_metrics(df, checks, policies, cfg.cfgs, cfg.n_boot,
                                                                       cfg.seed).items()}
        frames.append(df)
        k = slice(0, min(cfg.grid_columns, len(prompts)))
        rows = torch.cat([images[:1, :, k], pplus_images[None, :, k], images[1:, :, k]])  # (R, C, b, 3, H, W)
        figures[f"grid_{fam}"] = grid_figure(rows, ["plain", "p+ in prompt"] + [f"w={w:g}" for w in cfg.ws],
                                             [f"CFG {c:g}" for c in cfg.cfgs])
    bar.close()
    pplus.insert(0, "family", "none")
    # against the plain rows of one family (the plain model is the same for every family)
    metrics |= dose.prompt_metrics(frames[0], pplus, cfg.cfgs, cfg.n_boot, cfg.seed)
    df = pd.concat(frames + [pplus], ignore_index=True)
    df["prompt"] = [prompts[r] for r in df.row]
    figures["dose_response"] = dose.dose_figure(df, cfg.cfgs, cfg.n_boot, cfg.seed)
    lower = ("w0_max_abs_diff", "w0_vs_plain_max_abs_diff")
    higher = {k: not any(f"/{n}" in k for n in lower) for k in metrics}
    return Result(metrics=metrics, higher_is_better=higher, figures=figures,
                  tables={"scores.csv": df.to_csv(index=False, float_format="%.6g"), "sources.csv": source_files,
                          "w0_batch_jitter.csv": "\n".join(jitter) + "\n"})


EXPERIMENT = Experiment(
    name="guidance-dose", version="2", config=GuidanceDoseConfig, fn=guidance_dose, needs_dit=True,
    needs_images=True,
    question="Does modulation guidance with the proposal's quality p+/p- raise the toy quality score with its weight, "
    "at every CFG scale, and is w = 0 exactly the base model?")
