"""Does modulation guidance keep its effect beside a LoRA, a T-LoRA, a HydraLoRA or Spectrum, at CFG 1 / 3 / 5, and
do they keep theirs under guidance? The proposal's compatibility table, measured.

Two models, each with its own dose. *positive-control*: the toy model trained with a pooled-text path and quality
planted in it (``toyworld/positive_control.py``), its own projection, toy prompts. *distilled*: the shipped toy
model with the distilled ``pooled_text_proj``, prompts carrying the 13th artist's tag. Both are dosed as
guidance-dose doses them (``dose.calibrated_w``, the velocity-matched dose: one way to dose). The 13th-artist
adapters were trained on the shipped model, so their arms run there only; Spectrum (``FAST``) runs on both.
Arms, statistics, decision rules and controls (fixed before the first run): ``anima_probe/guidance/compat.py``.

Cost of the default config: 179 and 185 CPU s in two cold runs, 160-173 warm (1 torch thread, the shared 2-core
machine at load ~7): ~150 s sampling (7 model-arms x 10 DiT rows per prompt x 8 prompts x 10 steps, ~23 ms a row),
~15 s the 13-artist classifier (memoized for warm reruns). Over the ~100 s asked for; prompts / steps cut it.

Run: ``anima-probe run compatibility``
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from anima_probe.adapters.evaluate import NovelArtistEvalConfig, fit_artist_classifier
from anima_probe.errors import UsageError
from anima_probe.guidance import compat, dose, families
from anima_probe.guidance.guided import pair_delta, prepare
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.spectrum import FAST
from anima_probe.model.anima import load_anima
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.pipeline.provenance import REPO_ROOT, sha256_file
from anima_probe.toyworld import positive_control as pc
from anima_probe.toyworld.world import CONTENT_TYPES, NOVEL_ARTISTS

PROJECTION = "data/toyworld/pooled_text_proj.safetensors"
ADAPTERS = {arm: f"data/toyworld/lora/tsuki_hoshi-{arm}.safetensors" for arm in compat.ADAPTER_ARMS}
HYDRA_MOE = "data/toyworld/lora/tsuki_hoshi-hydra_moe.safetensors"  # the live HydraLoRA's heads and routers


@dataclass(frozen=True)
class CompatibilityConfig:
    seed: int = 0  # initial noise, shared by every arm and cell of a model (paired comparisons)
    prompts: int = 8  # per model, one per content type: the bootstrap clusters
    draws: int = 1  # noise draws per prompt: rows = prompts x draws
    cfgs: tuple[float, ...] = (1.0, 3.0, 5.0)  # ComfyUI scale (1 = no CFG)
    steps: int = 10  # Euler, shift 3; Spectrum FAST runs 7 of 10 real
    shift: float = 3.0
    calibration_prompts: int = 4  # rows dose.calibrated_w reads (its w moves ~4 % from 4 to 16 prompts)
    neutral_cfgs: tuple[float, ...] = (1.0,)  # the neutral pair: CFG 1, where the positive control holds
    size: int = 32
    # The classifier of the adapters' own evaluation (adapters/evaluate.py), so accuracies compare with eval.json.
    classifier_images: int = 2400
    n_boot: int = 1000


def _model(name, anima, source, rows, prompts, cfg, **extra) -> tuple[compat.Model, dict, torch.Tensor]:
    """Prepare a model, dosed by dose.calibrated_w on the first calibration rows at CFG 1."""
    g = load_prompt_sets()["guidance"]
    gp = prepare(anima, source, rows, g["positive"], g["negative"])
    neutral = replace(gp, delta=pair_delta(anima, source, *dose.NEUTRAL_PAIR))
    noise = initial_noise(anima, len(rows), cfg.size, cfg.seed)  # (R, C, h, w)
    k = min(cfg.calibration_prompts, len(rows))
    cal = dose.calibrated_w(anima, gp.rows(slice(k)), rows[:k], g["positive"], g["negative"], noise[:k],
                            dose.Sweep((0.0, 1.0), (1.0,), cfg.steps, cfg.shift))
    m = compat.Model(name, anima, gp, cal.w, neutral, dose.neutral_dose(cal.w, gp, neutral), prompts, **extra)
    return m, {f"{name}/w": cal.w, f"{name}/w_velocity_ratio": cal.ratio,
               f"{name}/w_neutral": m.w_neutral}, noise


def check(cfg: CompatibilityConfig) -> None:
    """Bad settings, named by their key, before anything is loaded."""
    if not 2 <= cfg.prompts <= len(CONTENT_TYPES):
        raise UsageError(f"prompts={cfg.prompts}: need 2..{len(CONTENT_TYPES)} (one per content type; the bootstrap "
                         "resamples prompts)")
    if cfg.draws < 1 or cfg.steps < 1 or cfg.calibration_prompts < 1:
        raise UsageError("draws, steps and calibration_prompts must be >= 1")
    if not cfg.cfgs or min(cfg.cfgs) < 1.0:
        raise UsageError(f"cfgs={cfg.cfgs}: need CFG scales >= 1 (1 = no CFG)")
    if not set(cfg.neutral_cfgs) <= set(cfg.cfgs):
        raise UsageError(f"neutral_cfgs={cfg.neutral_cfgs}: each must be one of cfgs={cfg.cfgs} (its w = 0 images "
                         "are the plain arm's)")


def compatibility(ctx: Context, cfg: CompatibilityConfig) -> Result:
    check(cfg)
    anima = ctx.anima
    if anima.vae is None and anima.dit_config.out_channels != 3:
        raise ValueError("compatibility scores RGB images: load the model with its VAE (or a pixel-space model)")
    how = compat.Sampling(cfg.cfgs, cfg.steps, cfg.shift, FAST)
    artist = NOVEL_ARTISTS[0]
    clf_cfg = replace(NovelArtistEvalConfig(artist=artist), classifier_images=cfg.classifier_images)
    clf, holdout = ctx.memoized(fit_artist_classifier)(clf_cfg)
    models, extras = [], {}

    texts = {"positive-control": dose.toy_prompts(cfg.prompts), "distilled": compat.novel_prompts(cfg.prompts, artist)}
    pc_anima = load_anima(pc.SHIPPED, with_vae=False, device=anima.device, dtype=anima.dtype)
    pc_source = families.load_source(pc.SHIPPED / pc.PROJECTION_FILE, pc_anima)
    models.append(_model("positive-control", pc_anima, pc_source, texts["positive-control"] * cfg.draws,
                         cfg.prompts, cfg, arms=("plain", "spectrum")))
    source = families.load_source(REPO_ROOT / PROJECTION, anima)
    models.append(_model("distilled", anima, source, texts["distilled"] * cfg.draws, cfg.prompts, cfg,
                         arms=compat.ARMS, adapters={a: str(REPO_ROOT / p) for a, p in ADAPTERS.items()},
                         classifier=clf, artist=artist))
    bar = tqdm(total=sum(len(m.arms) for m, _, _ in models), desc="compatibility", disable=not ctx.progress)
    frames = []
    for m, info, noise in models:
        frames.append(compat.run_model(m, noise, how, cfg.neutral_cfgs, progress=bar))
        extras |= info
    bar.close()
    d, _, noise = models[1]
    zero = compat.zero_adapter_diff(anima, d.gp, str(REPO_ROOT / ADAPTERS["lora"]), d.w, noise, how)
    df = pd.concat(frames, ignore_index=True)
    eff = compat.effects(df, cfg.n_boot, cfg.seed)
    own = compat.own_effects(df, cfg.n_boot, cfg.seed)
    saves = compat.forwards_saved(cfg.steps, FAST)
    verdict = compat.verdicts(eff, own, saves)
    metrics, higher = compat.metrics(eff, own, verdict)
    first = eff[(eff.model == "positive-control") & (eff.arm == "plain") & (eff.pair == "p+/p-")].iloc[0]
    controls = {"control/zero_adapter_max_abs_diff": (zero, False), "control/positive_found": (first.lo > 0, True),
                "control/classifier_holdout": (holdout, True), "control/in_range": (df.in_range.mean(), True),
                "spectrum/forwards_saved": (saves, True)} | {k: (v, True) for k, v in extras.items()}
    metrics |= {k: float(v) for k, (v, _) in controls.items()}
    higher |= {k: h for k, (_, h) in controls.items()}
    files = [("projection", REPO_ROOT / PROJECTION), ("positive_control", pc.SHIPPED / pc.PROJECTION_FILE),
             *((a, REPO_ROOT / p) for a, p in ADAPTERS.items()), ("hydra_moe", REPO_ROOT / HYDRA_MOE),
             *(("positive_control_dit", p) for p in sorted((pc.SHIPPED / "diffusion_models").glob("*")))]
    sources = "role,path,sha256\n" + "".join(f"{r},{p.relative_to(REPO_ROOT)},{sha256_file(p)}\n" for r, p in files)
    df["prompt_text"] = [texts[mo][p] for mo, p in zip(df.model, df.prompt, strict=True)]
    return Result(metrics=metrics, higher_is_better=higher,
                  tables={"rows.csv": df.to_csv(index=False, float_format="%.6g"),
                          "effects.csv": eff.to_csv(index=False, float_format="%.6g"),
                          "own.csv": own.to_csv(index=False, float_format="%.6g"),
                          "verdicts.csv": verdict.to_csv(index=False), "sources.csv": sources,
                          "classifier.json": pd.Series(asdict(clf_cfg)).to_json()})


EXPERIMENT = Experiment(
    name="compatibility", version="3", config=CompatibilityConfig, fn=compatibility, needs_dit=True,
    needs_images=True,
    question="Does modulation guidance keep its effect beside a LoRA, T-LoRA, HydraLoRA or Spectrum at CFG 1 / 3 / 5, "
    "and do they keep theirs under guidance (the proposal's compatibility table)?")
