"""Does guidance drift colours more with some samplers, schedules or Spectrum, as users reported?

The shipped toy projection (sorryhyun's family, ``pooled_text_proj``) steers toy prompts with the proposal's
quality p+ / p- under every sampler (euler, euler_ancestral, er_sde, dpmpp_2m_sde) x schedule (simple, sgm_uniform,
karras, exponential, beta, bong_tangent) x Spectrum arm (off; ``FAST``), from the same noise. Colour drift of each
guided image against the w = 0 image of the same arm: mean channel shift and saturation change, with bootstrap
intervals over prompts; the base projection's own drift (w = 0 against no modulation) and Spectrum's own drift
(against the full arm) beside it. Rules and controls (fixed before the
first run): ``anima_probe/guidance/drift.py``.

Run: ``anima-probe run scheduler-drift``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anima_probe.guidance import drift, families
from anima_probe.guidance.dose import toy_prompts
from anima_probe.guidance.guided import Cell, Guidance, prepare, sample_cells
from anima_probe.guidance.samplers import SAMPLERS, initial_noise
from anima_probe.guidance.sigmas import SCHEDULES
from anima_probe.guidance.spectrum import FAST
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.pipeline.provenance import REPO_ROOT

PROJECTION = "data/toyworld/pooled_text_proj.safetensors"


@dataclass(frozen=True)
class SchedulerDriftConfig:
    seed: int = 0  # initial noise and SDE noise, shared by every cell of an arm (paired comparisons)
    prompts: int = 4  # one image per prompt: the bootstrap unit
    # One guided weight (the top of guidance-dose's grid, where drift complaints arise) beside w = 0 and no
    # modulation: the 24 x 2 sampler runs at 10 steps already cost ~3.5 CPU minutes (1 thread), so the dose axis
    # is left to guidance-dose.
    ws: tuple[float, ...] = (8.0,)
    cfg: float = 4.0  # ComfyUI scale, as users run it
    steps: int = 10  # Spectrum FAST runs 7 of 10 real
    size: int = 32
    n_boot: int = 1000


def _metrics(summary, contrasts, w_max: float, neg: float, planted: float) -> tuple[dict, dict]:
    m = {"control/null_direction_max_abs_shift": neg, "control/planted_red_0.05": planted}
    hib = {"control/null_direction_max_abs_shift": False, "control/planted_red_0.05": True}
    for r in summary.itertuples():
        if r.comparison == "guidance" and r.w == w_max:
            m[f"shift/{r.sampler}/{r.schedule}/{r.arm}"] = r.shift
        elif r.comparison == "spectrum":
            m[f"spectrum_drift/{r.sampler}/{r.schedule}"] = r.shift
        elif r.comparison == "base" and r.arm == "full":
            m[f"base_drift/{r.sampler}/{r.schedule}"] = r.shift
    for r in contrasts.itertuples():
        m[f"minus_simple/{r.sampler}/{r.schedule}/{r.arm}"] = r.minus_simple
    for (sampler, arm), g in contrasts.groupby(["sampler", "arm"], sort=False):
        m[f"claim/bong_tangent_drifts/{sampler}/{arm}"] = float(g[g.schedule == "bong_tangent"].above.iloc[0])
        m[f"claim/only_simple_safe/{sampler}/{arm}"] = float(g.above.all())
    hib |= {k: False for k in m if k not in hib}
    return m, hib


def scheduler_drift(ctx: Context, cfg: SchedulerDriftConfig) -> Result:
    anima = ctx.anima
    if anima.vae is None and anima.dit_config.out_channels != 3:
        raise ValueError("scheduler-drift measures RGB colour: load the model with its VAE (or a pixel-space model)")
    guidance = load_prompt_sets()["guidance"]
    prompts = toy_prompts(cfg.prompts)
    gp = prepare(anima, families.load_source(REPO_ROOT / PROJECTION, anima), prompts, guidance["positive"],
                 guidance["negative"])
    noise = initial_noise(anima, len(prompts), cfg.size, cfg.seed)  # (B, C, h, w)
    # negative control: p+ = p- makes the Eq. 3 direction exactly zero, so the largest w must change nothing
    null_gp = prepare(anima, families.load_source(REPO_ROOT / PROJECTION, anima), prompts, guidance["positive"],
                      guidance["positive"])
    with torch.no_grad():
        zero = sample_cells(anima, null_gp, [Cell(Guidance(0.0), cfg.cfg), Cell(Guidance(max(cfg.ws)), cfg.cfg)],
                            noise, steps=cfg.steps)
    images = drift._images(anima, zero)  # (2, B, 3, H, W)
    neg = float(drift.drift(images[1], images[0])[["d_r", "d_g", "d_b", "d_sat"]].abs().to_numpy().max())
    planted = drift.planted_recovery(images[0])
    bar = tqdm(total=len(SAMPLERS) * len(SCHEDULES) * 2, desc="scheduler-drift", disable=not ctx.progress)
    df = drift.sweep(anima, gp, noise, cfg.ws, cfg=cfg.cfg, steps=cfg.steps, spectrum=FAST, seed=cfg.seed,
                     progress=bar)
    bar.close()
    df["prompt"] = [prompts[r] for r in df.row]
    summary = drift.summary(df, cfg.n_boot, cfg.seed)
    contrasts = drift.schedule_contrasts(df, max(cfg.ws), cfg.n_boot, cfg.seed)
    metrics, higher = _metrics(summary, contrasts, max(cfg.ws), neg, planted)
    return Result(metrics=metrics, higher_is_better=higher,
                  tables={"drift.csv": df.to_csv(index=False, float_format="%.6g"),
                          "summary.csv": summary.to_csv(index=False, float_format="%.6g"),
                          "contrasts.csv": contrasts.to_csv(index=False, float_format="%.6g")})


EXPERIMENT = Experiment(
    name="scheduler-drift", version="1", config=SchedulerDriftConfig, fn=scheduler_drift, needs_dit=True,
    needs_images=True,
    question="Does modulation guidance drift colours more under some samplers, sigma schedules or Spectrum "
    "(users: 'colour drift with bong_tangent', 'only simple is safe')?")
