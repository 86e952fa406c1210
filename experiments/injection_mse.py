"""Where should a pooled text vector enter the modulation path: before t_embedding_norm, after it, or into adaln_lora?

The proposal's injection-point experiment: a projected pooled text vector (max over the padded ``crossattn_emb`` by
default, from the embedding cache) is added with weight alpha at each point (`anima_probe.probes.sensitivity`), and the
velocity is compared with the unperturbed model's, averaged over a sigma grid, noise seeds and prompts.

Projection. Without a file, a fixed seeded Gaussian projection. Its output is rescaled (one scalar per point) to the
RMS of the activation it is added to, measured on the unperturbed model over the same inputs, so alpha reads "the
perturbation in units of that activation" and the points are compared at equal relative strength: the raw sinusoid
(~0.71), the normalised embedding and the AdaLN-LoRA term have different scales, and equal absolute vectors would
mostly compare those scales. before_norm and after_norm get the same D-wide direction; adaln_lora (3D) its own.
With ``projection=PATH`` (a ``pooled_text_proj`` file), its output is used as is at before/after_norm (alpha 1 =
the trained strength; an armed sigma-FiLM is skipped, as the community bake does); adaln_lora keeps the random
projection, since that file has no 3D head.

x_t is built around the model's own one-step estimate x0 = x1 - v(x1, sigma=1) for each prompt, so the inputs sit
near what the model sees while sampling, whatever its data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anima_probe.guidance.sources import load_pooled_text_proj
from anima_probe.model.flow import add_noise
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.cache import EmbeddingCache
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.figures import new_figure
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.probes.sensitivity import (
    INJECTION_POINTS,
    base_velocity,
    growth,
    point_width,
    random_projection,
    rescale_to_rms,
    velocity_mse,
)


@dataclass(frozen=True)
class InjectionConfig:
    seed: int = 0
    n_prompts: int = 4  # the first n content-type prompts of data/manifests
    pooling: str = "crossattn_emb/max_padded"  # an EmbeddingCache key
    projection: str | None = None  # a pooled_text_proj .safetensors; None = seeded random projection
    match_rms: bool = True  # random projection scaled to each point's activation RMS (False: RMS 1)
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    sigmas: tuple[float, ...] = (0.2, 0.5, 0.8)
    noise_seeds: int = 1  # per prompt; the batch is n_prompts x noise_seeds
    latent_size: int = 32


def _inputs(ctx: Context, config: InjectionConfig):
    """Pooled vectors (B, Dt), crossattn_emb (B, 512, Dt), x0 and noise (B, C, S, S); B = prompts x noise seeds."""
    anima = ctx.anima
    prompts = [row["prompt"] for row in load_prompt_sets()["content_types"][: config.n_prompts]]
    pooled_all = EmbeddingCache(ctx.cache_dir, anima).pooled(prompts, progress=ctx.progress)
    if config.pooling not in pooled_all:
        raise KeyError(f"pooling={config.pooling!r} is not a cache key; known: {sorted(pooled_all)}")
    n = config.noise_seeds
    pooled = pooled_all[config.pooling].repeat_interleave(n, 0)  # (B, Dt)
    emb = encode_prompts(anima, prompts, progress=False).crossattn_emb.repeat_interleave(n, 0)  # (B, 512, Dt)
    c, s = anima.dit_config.in_channels, config.latent_size
    gen = torch.Generator().manual_seed(config.seed)
    x1, noise = (torch.randn(len(pooled), c, s, s, generator=gen) for _ in range(2))  # (B, C, S, S)
    with torch.no_grad():
        x0 = x1 - anima.velocity(x1, torch.ones(len(pooled)), emb).float()  # one-step estimate at sigma 1
    return pooled, emb, x0, noise


def _vectors(anima, config: InjectionConfig, pooled: torch.Tensor, act_rms: dict[str, float]):
    """Per point (B, width): the vector added at alpha 1."""
    d = anima.dit_config.hidden
    rand = {"time": pooled @ random_projection(pooled.shape[1], d, config.seed),  # (B, D)
            "adaln_lora": pooled @ random_projection(pooled.shape[1], 3 * d, config.seed + 1)}  # (B, 3D)
    out = {p: rand["adaln_lora" if point_width(anima, p) == 3 * d else "time"] for p in INJECTION_POINTS}
    out = {p: rescale_to_rms(v, act_rms[p] if config.match_rms else 1.0) for p, v in out.items()}
    if config.projection:
        proj = load_pooled_text_proj(config.projection, model_channels=d)
        if proj.text_dim != pooled.shape[1]:
            raise ValueError(f"{config.projection}: text_dim {proj.text_dim} but {config.pooling} is {pooled.shape[1]}")
        with torch.no_grad():
            trained = proj(pooled, sigma_flat=True).float()  # (B, D)
        out.update(before_norm=trained, after_norm=trained)
    return out


def _figure(mse: dict[str, dict[float, float]]):
    fig = new_figure(figsize=(5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for point, by_alpha in mse.items():
        pairs = [(a, m) for a, m in by_alpha.items() if a > 0 and m > 0]
        if pairs:
            ax.loglog(*zip(*pairs), marker="o", label=point)
    alphas = sorted({a for by in mse.values() for a in by if a > 0})
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas], minor=False)
    ax.set_xticks([], minor=True)  # log-axis minor labels collide with the alpha ticks
    ax.set(xlabel="alpha", ylabel="velocity MSE vs unperturbed", title="Injection point sensitivity (log-log)")
    ax.legend(title="slope 2 = quadratic")
    return fig


def _tables(mse, rel, act_rms, v_ms):
    csv = ["point,alpha,mse,rel_mse,activation_rms"]
    csv += [f"{p},{a:g},{m:.6g},{rel[p][a]:.6g},{act_rms[p]:.6g}" for p, by in mse.items() for a, m in by.items()]
    alphas = list(next(iter(mse.values())))
    md = [f"Unperturbed velocity mean square: {v_ms:.4g}", "",
          "| point | activation RMS | " + " | ".join(f"MSE a={a:g}" for a in alphas) + " |",
          "|---|---|" + "---|" * len(alphas)]
    md += [f"| {p} | {act_rms[p]:.3g} | " + " | ".join(f"{m:.3g}" for m in by.values()) + " |" for p, by in mse.items()]
    return {"injection_mse.csv": "\n".join(csv) + "\n", "injection_mse.md": "\n".join(md) + "\n"}


def run(ctx: Context, config: InjectionConfig) -> Result:
    anima = ctx.anima
    pooled, emb, x0, noise = _inputs(ctx, config)
    sigmas = [torch.full((len(pooled),), float(s)) for s in config.sigmas]  # (B,) each
    x_ts = [add_noise(x0, noise, s) for s in sigmas]  # (B, C, S, S) each
    bases = [base_velocity(anima, x, s, emb) for x, s in zip(x_ts, sigmas)]
    act_rms = {p: sum(r[p] for _, r in bases) / len(bases) for p in INJECTION_POINTS}
    v_ms = sum(float(v.pow(2).mean()) for v, _ in bases) / len(bases)
    vectors = _vectors(anima, config, pooled, act_rms)
    sums = {p: [0.0] * len(config.alphas) for p in INJECTION_POINTS}
    jobs = [(p, i) for p in INJECTION_POINTS for i in range(len(sigmas))]
    for p, i in tqdm(jobs, desc="injection mse", disable=not ctx.progress):
        got = velocity_mse(anima, p, vectors[p], config.alphas, x_ts[i], sigmas[i], emb, base=bases[i][0])
        sums[p] = [a + b for a, b in zip(sums[p], got)]
    mse = {p: {a: s / len(sigmas) for a, s in zip(config.alphas, sums[p])} for p in INJECTION_POINTS}
    rel = {p: {a: m / v_ms for a, m in by.items()} for p, by in mse.items()}
    metrics = {f"{kind}/{p}/alpha_{a:g}": val for kind, d in (("mse", mse), ("rel_mse", rel))
               for p, by in d.items() for a, val in by.items()}
    if 4.0 in config.alphas and 8.0 in config.alphas:
        metrics |= {f"growth_4_to_8/{p}": growth(mse[p], 4.0, 8.0) for p in INJECTION_POINTS}
    # higher = more control authority over the velocity, which is what an injection point is for
    return Result(metrics, {k: True for k in metrics}, figures={"mse_vs_alpha": _figure(mse)},
                  tables=_tables(mse, rel, act_rms, v_ms))


EXPERIMENT = Experiment(
    name="injection-mse",
    version="1",
    question="How much does the velocity change when a projected pooled text vector is added before "
             "t_embedding_norm, after it, or into adaln_lora, as its weight alpha grows?",
    config=InjectionConfig,
    fn=run,
    needs_dit=True,
)
