"""How much of what the quality tags do to the velocity can a vector added after t_embedding_norm do instead?

The proposal's premise in the frozen DiT (text encoder + DiT, no training: runs on the real Anima too). Per prompt,
noise draw and sigma the target is v(x; "p+, prompt") - v(x; "p-, prompt"); a per-row vector delta added where the
AdaLN heads read the time embedding (every block and the final layer) is fitted so that v(x; "p-, prompt", delta) -
v(x; "p-, prompt") reproduces it: R^2 = 1 - |residual|^2 / |target|^2 per sigma (fit: ``probes/reachability.py``,
a fixed number of nonlinear CG steps, so R^2 is a lower bound). Rules fixed before the run: null (a) the same fit
for a random neutral trained-tag pair with p+'s / p-'s tag counts (one draw per prompt); null (b) the next prompt's
target, same draw and sigma, at this row's norm; positive control: the response to a known vector (random direction,
``control_scale`` x the row's t_embedding_norm norm) must be reached; delta on one third of the blocks only (control
and thirds at ``side_sigmas``). The fitted vector is the oracle: each shipped source's Eq. 3 delta (w = 1, every
block, plain model) against it by cosine (velocity changes; vectors for pooled_text_proj). Prompts are clusters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from anima_probe.errors import AnimaProbeError, UsageError
from anima_probe.guidance import families
from anima_probe.guidance.guided import prepare
from anima_probe.guidance.modulation import build
from anima_probe.guidance.schedules import Schedule
from anima_probe.model.clip import load_clip
from anima_probe.model.flow import add_noise
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.vocabulary import checked_prompt_sets
from anima_probe.probes import reachability as rc
from anima_probe.probes.directions import random_tag_sets, tag_count
from anima_probe.probes.hooks import capture
from anima_probe.training.response import quality_pair

SHIPPED = {"projection": "data/toyworld/pooled_text_proj.safetensors", "clip": "data/toyworld/model/clip",
           "cosmos_adapter": "data/toyworld/cosmos_pooled_adapter.safetensors"}
NULLS, LOWER = ("neutral", "permuted"), ("p", "p_holm", "mde")  # lower is better for these (the rest: higher)


@dataclass(frozen=True)
class ReachabilityConfig:
    seed: int = 0
    n_prompts: int = 16  # content i % 8 + neutral tag 5i % pool: on the toy tier dose.toy_prompts (8 contents, 12 artists)
    noise_seeds: int = 2  # per prompt, for the statistic and null (a); the other fits use the first draw
    sigmas: tuple[float, ...] = (0.2, 0.5, 0.8)
    side_sigmas: tuple[float, ...] = (0.5,)  # where the positive control and the block groups are fitted too
    iters: int = 4  # nonlinear CG steps per fit (fixed before the run; the best R^2 after half is reported too)
    fd_step: float = 1e-3  # finite-difference step (RMS per coordinate of delta); raise it for bf16 models
    control_scale: float = 0.5  # positive control: |known delta| / |t_embedding_norm output|
    prompt_sets: str | None = None  # folder; None = the one that fits the model
    prompt_variant: str = "proposal"  # p+ / p-
    projection: str = "auto"  # sources compared with the oracle: a file, none, or auto (the shipped one, if it fits)
    cosmos_adapter: str = "auto"
    clip: str = "auto"
    latent_size: int = 32
    chunk: int = 64  # rows per fitted batch (memory); rows are independent, so results do not depend on it
    n_boot: int = 2000

    def __post_init__(self):
        if not set(self.side_sigmas) <= set(self.sigmas):
            raise UsageError(f"side_sigmas={self.side_sigmas}: each must be one of sigmas={self.sigmas}")


def _prompts(sets: dict, n: int) -> list[str]:
    contents, pool = [c["prompt"] for c in sets["content_types"]], sets["tag_sets"]["neutral"]
    return [f"{contents[i % len(contents)]}, {pool[(5 * i) % len(pool)]}" for i in range(n)]


def _sources(ctx: Context, cfg: ReachabilityConfig, pos: str, neg: str) -> list[tuple]:
    """[(family, the modulation of its Eq. 3 delta term at w = 1, its delta (1, W))]; an ``auto`` file that is
    absent or does not fit the model (the toy files on the real Anima) is skipped, a named one must load."""
    out, n = [], ctx.anima.num_blocks
    for key in ("projection", "cosmos_adapter"):
        path = REPO_ROOT / SHIPPED[key] if (value := getattr(cfg, key)) == "auto" else Path(value)
        if value == "none" or (value == "auto" and not path.is_file()):
            continue
        try:
            source, clip = families.load_source(path, ctx.anima), None
            if (fam := families.family_of(source)).needs_clip:
                clip = load_clip(REPO_ROOT / SHIPPED["clip"] if cfg.clip == "auto" else cfg.clip)
        except AnimaProbeError:
            if value == "auto":
                continue
            raise
        gp = prepare(ctx.anima, source, [pos], pos, neg, clip=clip)
        out.append((fam.name, build(fam.name, lambda w, d=gp.delta: w * d, Schedule().weights(n, 1.0),
                                    final_weight=None, active=Schedule().active(n), scales=gp.scales), gp.delta))
    return out


def run(ctx: Context, cfg: ReachabilityConfig) -> Result:
    anima, P, N = ctx.anima, cfg.n_prompts, cfg.noise_seeds
    (sets, check), (pos, neg) = checked_prompt_sets(anima, cfg.prompt_sets), quality_pair(cfg.prompt_variant)
    prompts, pool = _prompts(sets, P), sets["tag_sets"]["neutral"]
    neutral = random_tag_sets(pool, P, (tag_count(pos), tag_count(neg)), cfg.seed)  # one null pair per prompt
    emb = encode_prompts(anima, [*prompts, *(f"{t}, {p}" for t in (pos, neg) for p in prompts), *(
        f"{a}, {p}" for p, pair in zip(prompts, neutral, strict=True) for a in pair)]).crossattn_emb.float()  # (5P, ...)
    plain, plus, minus, n_plus, n_minus = (e.repeat_interleave(N, 0) for e in (  # (B, 512, Dt) each
        emb[:P], emb[P:2 * P], emb[2 * P:3 * P], emb[3 * P::2], emb[3 * P + 1::2]))
    B, every, first = P * N, torch.arange(P * N), torch.arange(0, P * N, N)  # rows; each prompt's first draw
    gen, shape = torch.Generator().manual_seed(cfg.seed), (B, anima.dit_config.in_channels, *[cfg.latent_size] * 2)
    x1, noise = (torch.randn(shape, generator=gen).to(anima.device) for _ in range(2))  # drawn on the CPU: any device
    with torch.no_grad():
        x0 = x1 - anima.velocity(x1, torch.ones(B, device=anima.device), plain).float()  # one-step estimate of x0
    sources, groups, side = _sources(ctx, cfg, pos, neg), rc.block_groups(anima.num_blocks), set(cfg.side_sigmas)
    metrics, per_prompt, table = {}, {}, ["sigma,fit,prompt,noise,r2,r2_half,delta_over_embedding"]
    for s in cfg.sigmas:
        sig = torch.full((B,), s, device=anima.device)
        x_t = add_noise(x0, noise, sig)
        with torch.no_grad():
            with capture(anima, "t_embedding_norm") as cap:
                base = anima.velocity(x_t, sig, minus).float()
            target = anima.velocity(x_t, sig, plus).float() - base
            n_base = anima.velocity(x_t, sig, n_minus).float()
            n_target = anima.velocity(x_t, sig, n_plus).float() - n_base
        e_norm = cap["t_embedding_norm"].value.float().norm(dim=1)  # (B,): what delta is measured against
        rows = rc.Rows(first, minus[first], base[first], target[first])  # one per prompt (its first draw)
        extra = {"control": replace(rows, target=rc.control_target(anima, rows, x_t, sig, e_norm[first],
                                                                   cfg.control_scale, gen)),
                 **{g: replace(rows, blocks=b) for g, b in groups.items()}} if s in side else {}
        fits = rc.fit_all(anima, {"quality": rc.Rows(every, minus, base, target),
                                  "neutral": rc.Rows(every, n_minus, n_base, n_target),
                                  "permuted": replace(rows, target=rc.next_prompts_target(rows.target)), **extra},
                          x_t, sig, cfg.iters, cfg.chunk, cfg.fd_step, ctx.progress, f"reachability sigma {s:g}")
        for name, fit in fits.items():
            index = every if fit.r2.shape[0] == B else first
            m, per_prompt[name, s] = rc.prompt_summary(f"{name}/r2@{s:g}", fit.r2, P, cfg.n_boot, cfg.seed)
            half = fit.history[: cfg.iters // 2 + 1].max(0).values  # the best after half the steps
            metrics |= m | {f"{name}/r2_half@{s:g}": float(half.mean())}
            table += [f"{s:g},{name},{int(i) // N},{int(i) % N},{a:.6g},{h:.6g},{dn:.6g}" for i, a, h, dn in zip(
                index, fit.r2, half, fit.delta.norm(dim=1) / e_norm[index], strict=True)]
        for fam, mod, delta in sources:
            metrics |= rc.source_cosines(anima, fam, mod, delta, fits["quality"], x_t, sig, minus, base, target,
                                         f"@{s:g}", P, cfg.n_boot, cfg.seed)
    metrics |= rc.null_tests(per_prompt, cfg.sigmas, cfg.n_boot, cfg.seed)
    notes = (f"Prompts: {'; '.join(prompts)}. Neutral pairs (seed {cfg.seed}): {'; '.join(map(' / '.join, neutral))}"
             f". {check.describe()} Sources: {', '.join(f for f, _, _ in sources) or 'none'}. Block groups: {groups}.")
    better = {k: k.split("/")[0] not in NULLS and k.split("/")[-1] not in LOWER for k in metrics}
    return Result(metrics, better, figures={"r2": rc.figure(per_prompt, cfg.sigmas)},
                  tables={"fits.csv": "\n".join(table) + "\n", "notes.md": notes + "\n"})


EXPERIMENT = Experiment(
    name="modulation-reachability", version="1", config=ReachabilityConfig, fn=run, needs_dit=True,
    question="How much of the DiT's velocity response to the quality tags p+ vs p- in cross-attention can a "
             "per-row vector added after t_embedding_norm reproduce, beyond a neutral tag pair and another "
             "prompt's target, in which block third, and how close do the distilled sources come to that oracle?")
