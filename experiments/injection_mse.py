"""Where should a pooled text vector enter the modulation path: before t_embedding_norm, after it, or into adaln_lora?

The proposal's injection-point experiment: a projected pooled text vector (max over the padded ``crossattn_emb`` by
default, from the embedding cache) is added with weight alpha at each point (`anima_probe.probes.sensitivity`), and the
velocity is compared with the unperturbed model's over prompts x noise draws x a sigma grid. ``adaln_lora`` is
measured twice: per block plus the final ``norm_out`` (a hook on the term itself) and per block only (official).

Two ways, side by side. **absolute** (the proposal's): one fixed seeded Gaussian projection scaled to RMS 1 over the
set, the same alpha at every point, so the points' own activation scales are part of what is compared. **RMS-matched**
(ours, unprefixed keys): the same vectors rescaled (one scalar per point) to the RMS of the activation they are added
to, so alpha reads "the perturbation in units of that activation". before/after_norm get the same D-wide direction,
the adaln points their own 3D one. With ``projection=PATH`` (a ``pooled_text_proj`` file) its output is used as is
at before/after_norm in both ways (alpha 1 = the trained strength).

Uncertainty: a prompt is a cluster (its noise draws and sigmas are averaged first); BCa intervals over prompts, and
the proposal's two comparisons (after vs before norm at alpha 2; growth 4 -> 8 after-norm vs each adaln point) tested
with the exact swap null (points exchanged within prompts), Holm-adjusted over the tests and both ways, with the MDE.
x_t is built around the model's own one-step estimate x0 = x1 - v(x1, sigma=1), so inputs sit near sampling's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anima_probe.errors import InputError, UnknownNameError
from anima_probe.guidance.sources import load_pooled_text_proj
from anima_probe.model.flow import add_noise
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.cache import EmbeddingCache
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.vocabulary import checked_prompt_sets
from anima_probe.probes import sensitivity as inj

WAYS = {"": "RMS-matched", "absolute/": "absolute"}  # metric prefix -> way
LOWER = {"null_q05", "null_q50", "null_q95", "null_sd", "p", "p_holm", "mde"}  # the rest: higher = more authority


@dataclass(frozen=True)
class InjectionConfig:
    seed: int = 0
    n_prompts: int = 8  # the first n content prompts of the prompt set (the clusters of every CI)
    prompt_sets: str | None = None  # folder; None = the one that fits the model (anima_probe.pipeline.vocabulary)
    pooling: str = "crossattn_emb/max_padded"  # an EmbeddingCache key
    projection: str | None = None  # a pooled_text_proj .safetensors; None = seeded random projection
    alphas: tuple[float, ...] = (2.0, 4.0, 8.0)  # what the proposal's table reads; each alpha costs 8 forwards per sigma
    sigmas: tuple[float, ...] = (0.2, 0.5, 0.8)
    noise_seeds: int = 2  # per prompt; the batch is n_prompts x noise_seeds
    latent_size: int = 32
    n_boot: int = 2000


def _inputs(ctx: Context, config: InjectionConfig):
    """Pooled vectors (B, Dt), crossattn_emb (B, 512, Dt), x0 and noise (B, C, S, S); B = prompts x noise seeds."""
    anima = ctx.anima
    sets, check = checked_prompt_sets(anima, config.prompt_sets)
    prompts = [row["prompt"] for row in sets["content_types"][: config.n_prompts]]
    pooled_all = EmbeddingCache(ctx.cache_dir, anima).pooled(prompts, progress=ctx.progress)
    if config.pooling not in pooled_all:
        raise UnknownNameError(f"pooling={config.pooling!r} is not a cache key; known: {sorted(pooled_all)}")
    n = config.noise_seeds
    pooled = pooled_all[config.pooling].repeat_interleave(n, 0)  # (B, Dt), prompt-major rows
    emb = encode_prompts(anima, prompts, progress=False).crossattn_emb.repeat_interleave(n, 0)  # (B, 512, Dt)
    c, s = anima.dit_config.in_channels, config.latent_size
    gen = torch.Generator().manual_seed(config.seed)
    x1, noise = (torch.randn(len(pooled), c, s, s, generator=gen) for _ in range(2))  # (B, C, S, S)
    with torch.no_grad():
        x0 = x1 - anima.velocity(x1, torch.ones(len(pooled)), emb).float()  # one-step estimate at sigma 1
    return pooled, emb, x0, noise, check.describe()


def _vectors(anima, config: InjectionConfig, pooled: torch.Tensor, act_rms: dict[str, float]):
    """{prefix: {point: (B, width)}}: the vectors added at alpha 1, in both ways."""
    d = anima.dit_config.hidden
    rand = {w: pooled @ inj.random_projection(pooled.shape[1], w, config.seed + i) for i, w in enumerate((d, 3 * d))}
    out = {prefix: {p: inj.rescale_to_rms(rand[inj.point_width(anima, p)], act_rms[p] if prefix == "" else 1.0)
                    for p in inj.INJECTION_POINTS} for prefix in WAYS}  # fmt: skip
    if config.projection:
        proj = load_pooled_text_proj(config.projection, model_channels=d)
        if proj.text_dim != pooled.shape[1]:
            raise InputError(f"{config.projection}: text_dim {proj.text_dim} but {config.pooling} is {pooled.shape[1]}")
        with torch.no_grad():
            trained = proj(pooled, sigma_flat=True).float()  # (B, D)
        for way in out.values():
            way.update(before_norm=trained, after_norm=trained)
    return out


def run(ctx: Context, config: InjectionConfig) -> Result:
    anima = ctx.anima
    pooled, emb, x0, noise, checked = _inputs(ctx, config)
    sigmas = [torch.full((len(pooled),), float(s)) for s in config.sigmas]  # (B,) each
    x_ts = [add_noise(x0, noise, s) for s in sigmas]  # (B, C, S, S) each
    bases = [inj.base_velocity(anima, x, s, emb) for x, s in zip(x_ts, sigmas)]
    act_rms = {p: sum(r[p] for _, r in bases) / len(bases) for p in inj.INJECTION_POINTS}
    vectors = _vectors(anima, config, pooled, act_rms)
    means = {}
    jobs = [(w, p) for w in WAYS for p in inj.INJECTION_POINTS]
    for prefix, p in tqdm(jobs, desc="injection mse", disable=not ctx.progress):
        mse = torch.stack([inj.velocity_mse(anima, p, vectors[prefix][p], config.alphas, x_ts[i], sigmas[i], emb,
                                            base=bases[i][0]) for i in range(len(sigmas))], 1)  # (A, S, B)
        means[prefix, p] = inj.prompt_means(mse.numpy(), config.n_prompts)  # (A, P)
    metrics, curves = inj.curve_metrics(means, config.alphas, config.n_boot, config.seed)
    metrics |= inj.proposal_tests(means, config.alphas, config.n_boot, config.seed)
    metrics |= {f"act_rms/{p}": v for p, v in act_rms.items()}
    metrics["v_ms"] = sum(float(v.pow(2).mean()) for v, _ in bases) / len(bases)  # the unperturbed scale
    per_prompt = [f"{WAYS[w]},{p},{a:g},{j},{v:.6g}" for (w, p), m in means.items()
                  for a, row in zip(config.alphas, m, strict=True) for j, v in enumerate(row)]
    better = {k: not LOWER & set(k.split("/")) for k in metrics}
    return Result(metrics, better, tables={
        "injection_mse.csv": "way,point,alpha,mse,ci_low,ci_high\n" + "".join(
            f"{WAYS[w]},{p},{a:g},{v:.6g},{lo:.6g},{hi:.6g}\n" for w, p, a, v, lo, hi in curves),
        "per_prompt.csv": "way,point,alpha,prompt,mse\n" + "\n".join(per_prompt) + "\n",
        "prompts.md": checked + "\n"})


EXPERIMENT = Experiment(
    name="injection-mse",
    version="2",
    question="How much does the velocity change when a projected pooled text vector is added before "
             "t_embedding_norm, after it, or into adaln_lora (per block, or per block and the final layer), as its "
             "weight alpha grows, and are the proposal's comparisons beyond what swapping the points gives?",
    config=InjectionConfig,
    fn=run,
    needs_dit=True,
)
