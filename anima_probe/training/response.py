"""Does the distilled source do what the quality tags do? The student's p+/p- response against the teacher's.

The distillation loss says how close the student's velocity is to the teacher's on average; modulation guidance
(Eq. 3) uses something narrower: the *difference* the source makes between p+ and p-. This module measures exactly
that, per sigma, on the validation captions (never trained on):

    teacher response  r_T = v(x_t; crossattn("p+, c")) - v(x_t; crossattn("p-, c"))
    student response  r_S = v(x_t; crossattn(""), S(pool("p+, c"))) - v(x_t; crossattn(""), S(pool("p-, c")))

and logs their cosine (does the source push in the teacher's direction?) and norm ratio |r_S| / |r_T| (how far?),
each a mean over the probe rows at one sigma. A zero-initialised source gives r_S = 0: cosine 0 and ratio 0 at
step 0, so the curves start from "knows nothing". p+ / p- are the proposal's pair (data/manifests), or a named
variant of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anima_probe.errors import UsageError
from anima_probe.model.anima import CROSSATTN_TOKENS
from anima_probe.model.flow import add_noise

_PROBE_STREAM = 7_919  # the probe's noise has its own seed stream, apart from training steps and validation

# (x_t (n, C, h, w), sigma (n,), pooled (n, P)) -> the student's velocity (n, C, h, w)
StudentVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def quality_pair(variant: str) -> tuple[str, str]:
    """p+ and p- of the proposal (``proposal``) or of a variant in data/manifests/guidance_prompts.json."""
    from anima_probe.pipeline.manifests import load_prompt_sets

    guidance = load_prompt_sets()["guidance"]
    variants = {"proposal": guidance} | guidance["variants"]
    if variant not in variants:
        raise UsageError(f"response_pair={variant!r}: choose from {sorted(variants)}")
    return variants[variant]["positive"], variants[variant]["negative"]


@dataclass
class ResponseProbe:
    """Fixed probe states (rows x sigma grid) and the teacher's response on them, computed once."""

    x_t: torch.Tensor  # (n, C, h, w)
    sigma: torch.Tensor  # (n,)
    pooled: torch.Tensor  # (2, n, P): the source's input for "p+, c" and "p-, c"
    teacher: torch.Tensor  # (n, C, h, w) float32 r_T
    grid: tuple[float, ...]


def _pad(crossattn: torch.Tensor) -> torch.Tensor:
    return F.pad(crossattn, (0, 0, 0, CROSSATTN_TOKENS - crossattn.shape[1]))  # (B, 512, Dt)


@torch.no_grad()
def make_probe(anima, encode: Callable, x0: torch.Tensor, captions: list[str], pos: str, neg: str,
               grid: tuple[float, ...], seed: int) -> ResponseProbe:
    """``encode(captions) -> (crossattn (N, L, Dt), pooled (N, P))`` the way the run encodes its data; ``x0`` (R, C,
    h, w) the probe captions' clean samples. Every caption meets every sigma of ``grid`` with fixed noise."""
    crossattn, pooled = encode([f"{t}, {c}" for t in (pos, neg) for c in captions])
    R, S = len(captions), len(grid)
    rows = torch.arange(R).repeat_interleave(S)  # (n,) caption of each probe state
    sigma = torch.tensor(grid, dtype=torch.float32).repeat(R).to(x0.device)  # (n,)
    g = torch.Generator().manual_seed(seed * 1_000_003 + _PROBE_STREAM)
    noise = torch.randn((len(rows), *x0.shape[1:]), generator=g).to(x0.device)
    x_t = add_noise(x0[rows.to(x0.device)], noise, sigma)
    ctx = _pad(crossattn.to(x0.device))  # (2R, 512, Dt)
    teacher = (anima.velocity(x_t, sigma, ctx[:R][rows]) - anima.velocity(x_t, sigma, ctx[R:][rows])).float()
    return ResponseProbe(x_t, sigma, torch.stack([pooled[:R][rows], pooled[R:][rows]]).to(x0.device), teacher,
                         tuple(grid))


@torch.no_grad()
def response_metrics(student_velocity: StudentVelocity, probe: ResponseProbe) -> dict[str, float]:
    """``resp_cos@sigma`` and ``resp_norm@sigma``: mean over probe rows of cos(r_S, r_T) and |r_S| / |r_T|."""
    plus = student_velocity(probe.x_t, probe.sigma, probe.pooled[0])
    minus = student_velocity(probe.x_t, probe.sigma, probe.pooled[1])
    r_s, r_t = (plus - minus).float().flatten(1), probe.teacher.flatten(1)  # (n, D)
    cos = F.cosine_similarity(r_s, r_t, dim=1, eps=1e-12)  # (n,); 0 where the student does not respond
    ratio = r_s.norm(dim=1) / r_t.norm(dim=1)
    out = {}
    for g in probe.grid:
        hit = probe.sigma == g
        out[f"resp_cos@{g:g}"] = float(cos[hit].mean())
        out[f"resp_norm@{g:g}"] = float(ratio[hit].mean())
    return out


def response_columns(grid: tuple[float, ...]) -> list[str]:
    return [f"resp_{k}@{g:g}" for k in ("cos", "norm") for g in grid]
