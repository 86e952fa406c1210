"""Does modulation guidance keep its effect beside a LoRA, a T-LoRA, a HydraLoRA or Spectrum, and do they keep theirs
under guidance? The proposal's compatibility table, measured (issue 15 item 3).

A *model* here is a DiT with a modulation source, a dose and a prompt set; an *arm* is one feature switched on
(``ARMS``: none, one of the three adapter kinds through ``adapters.load.adapter_applied``, or Spectrum through the
guided sampler). Within an arm every CFG scale samples the same prompts from the same noise at w = 0 and at the
model's dose (``sample_arm``), so every comparison is paired by prompt and noise draw. Per image: the toy quality
score, for adapter arms whether the 13-artist classifier names the adapter's new artist, for Spectrum the mean
absolute pixel error against the plain arm's image of the same cell (full sampling).

Statistics: a prompt is a cluster (its noise draws are averaged first); 95 % intervals are percentile bootstraps
over prompts (``dose.cluster_effect``, as guidance-dose reads them); the MDE of a paired mean is ``stats.mde`` at two-sided 5 %, 80 %
power.

The rules, fixed in this file before the first run (``verdicts``):
- guidance's effect in an arm at a CFG scale: E = mean over prompts of score(w_dose) - score(0); the arm against
  the plain arm: D = E_arm - E_plain, paired. Guidance is *readable* at a scale when E_plain's interval excludes 0.
- guidance with the feature: "changes" when D's interval excludes 0 at any scale; otherwise "persists" when it is
  readable at one scale at least; otherwise "unreadable" (no effect to persist).
- the feature's own effect under guidance: an adapter keeps it when its gain in new-artist accuracy over the plain
  arm at the dose (pooled over CFG scales, paired by prompt) has its interval above 0; Spectrum keeps it when it
  saves forwards and its error against full sampling does not grow with guidance (the interval of
  error(w_dose) - error(0) reaches 0 or lies below it).
- the verdict "persists" needs both; CFG itself "stacks" with guidance when E_plain's interval is above 0 at every
  scale (the proposal: "complementary ... they stack").
Controls: a zero-up adapter (the plain LoRA with its up weights zeroed) must change nothing, bit for bit (the null
of D, through the same adapter machinery); a neutral tag pair dosed to the same modulation length (negative:
~0 expected); the positive-control model at CFG 1 (positive: its planted gain must be found).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from anima_probe.adapters.apply import lora_applied
from anima_probe.adapters.load import adapter_applied
from anima_probe.adapters.lora import read_lora
from anima_probe.guidance.dose import clustered_mean, scores
from anima_probe.guidance.guided import Cell, Guidance, GuidedPrompts, sample_cells
from anima_probe.guidance.spectrum import SpectrumConfig, real_steps
from anima_probe.toyworld.scorer import in_range
from anima_probe.toyworld.world import CONTENT_TAGS, CONTENT_TYPES

ARMS = ("plain", "lora", "tlora", "hydra", "spectrum")
ADAPTER_ARMS = ("lora", "tlora", "hydra")
LEVELS = ("0", "dose")  # w = 0 and w = the model's dose


def novel_prompts(n: int, artist: str) -> list[str]:
    """n prompts, content tags of one content type each (the proposal's order) + the adapter's new artist tag."""
    if not 1 <= n <= len(CONTENT_TYPES):
        raise ValueError(f"novel-artist prompts: need 1..{len(CONTENT_TYPES)} (one per content type), got {n}")
    return [f"{', '.join(CONTENT_TAGS[c])}, {artist}" for c in CONTENT_TYPES[:n]]


@dataclass(frozen=True)
class Sampling:
    """How every arm samples: Euler over the shift schedule, one batch per CFG scale (its w = 0 and dose cells)."""

    cfgs: tuple[float, ...]
    steps: int
    shift: float
    spectrum: SpectrumConfig


@dataclass
class Model:
    """One model of the experiment: a DiT with its modulation source prepared for a prompt set (``gp``; row r is
    prompt r % ``prompts``), the dose, the neutral pair prepared likewise with its own dose, the arms it runs
    (plain first: the others are compared with it) and, for adapter arms, the files and the new-artist classifier."""

    name: str
    anima: object
    gp: GuidedPrompts
    w: float
    neutral: GuidedPrompts
    w_neutral: float
    prompts: int
    arms: tuple[str, ...]
    adapters: dict[str, str] = field(default_factory=dict)
    classifier: object | None = None
    artist: str | None = None


def _arm_context(anima, arm: str, adapter: str | None):
    if arm in ADAPTER_ARMS:
        return adapter_applied(anima, adapter)
    return contextlib.nullcontext()


def _images(anima, x: torch.Tensor) -> torch.Tensor:
    out = anima.decode(x.flatten(0, 1))  # (K*B, 3, H, W) in [0, 1]
    return out.view(*x.shape[:2], *out.shape[1:])  # (K, B, 3, H, W)


@torch.no_grad()
def sample_arm(anima, gp: GuidedPrompts, arm: str, w: float, noise: torch.Tensor, how: Sampling,
               adapter: str | None = None) -> torch.Tensor:
    """Images (len(cfgs), 2, B, 3, H, W) of one arm: per CFG scale the w = 0 and w = ``w`` cells, one batch."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    cells = [Cell(Guidance(v), c) for c in how.cfgs for v in (0.0, w)]
    with _arm_context(anima, arm, adapter):
        x = sample_cells(anima, gp, cells, noise, steps=how.steps, shift=how.shift, chunk=2,
                         spectrum=how.spectrum if arm == "spectrum" else None)  # (2C, B, ch, h, w)
    images = _images(anima, x)
    return images.view(len(how.cfgs), 2, *images.shape[1:])


def frame(images: torch.Tensor, model: str, arm: str, pair: str, w: float, cfgs: Sequence[float], prompts: int,
          novel=None, artist: str | None = None, full: torch.Tensor | None = None) -> pd.DataFrame:
    """Long rows (model, arm, pair, cfg, level, w, row, prompt, score, in_range[, novel][, error]) of an arm's
    images (C, 2, B, 3, H, W); row r belongs to prompt r % ``prompts``. ``novel``: a classifier whose hit on
    ``artist`` is recorded; ``full``: the plain arm's images of the same cells, for the pixel error."""
    C, L, B = images.shape[:3]
    flat = images.flatten(0, 2)  # (C*2*B, 3, H, W)
    hwc = flat.permute(0, 2, 3, 1).float().cpu().numpy()  # (N, H, W, 3)
    df = pd.DataFrame({"model": model, "arm": arm, "pair": pair,
                       "cfg": np.repeat(np.asarray(cfgs, float), L * B),
                       "level": np.tile(np.repeat(LEVELS, B), C), "w": np.tile(np.repeat([0.0, w], B), C),
                       "row": np.tile(np.arange(B), C * L), "prompt": np.tile(np.arange(B) % prompts, C * L),
                       "score": scores(flat), "in_range": in_range(hwc)})
    if novel is not None:
        df["novel"] = np.asarray(novel.predict(hwc)) == artist
    if full is not None:
        df["error"] = (images - full).abs().flatten(3).mean(dim=3).flatten().cpu().numpy()  # (C*2*B,)
    return df


@torch.no_grad()
def zero_adapter_diff(anima, gp: GuidedPrompts, lora_file: str, w: float, noise: torch.Tensor, how: Sampling,
                      rows: int = 2) -> float:
    """The null of D through the adapter machinery: the plain LoRA with every up weight zeroed, on the first
    ``rows`` rows at the dose and the largest CFG scale, against no adapter in the same batch shape. Must be 0."""
    weights = read_lora(lora_file, anima.dit_config)
    zero = replace(weights, up={m: torch.zeros_like(u) for m, u in weights.up.items()})
    sub = gp.rows(slice(rows))
    cells = [Cell(Guidance(w), max(how.cfgs))]
    plain = sample_cells(anima, sub, cells, noise[:rows], steps=how.steps, shift=how.shift)
    with lora_applied(anima, zero, name="zero"):
        nulled = sample_cells(anima, sub, cells, noise[:rows], steps=how.steps, shift=how.shift)
    return float((plain - nulled).abs().max())


def run_model(m: Model, noise: torch.Tensor, how: Sampling, neutral_cfgs: Sequence[float],
              progress=None) -> pd.DataFrame:
    """Every arm of one model, then the neutral pair on the plain arm (its w = 0 images are the plain arm's)."""
    if m.arms[0] != "plain":
        raise ValueError(f"{m.name}: the plain arm must come first (the others are compared with it), got {m.arms}")
    frames, plain = [], None
    for arm in m.arms:
        images = sample_arm(m.anima, m.gp, arm, m.w, noise, how, m.adapters.get(arm))
        plain = images if arm == "plain" else plain
        frames.append(frame(images, m.name, arm, "p+/p-", m.w, how.cfgs, m.prompts, m.classifier, m.artist,
                            full=plain if arm == "spectrum" else None))
        if progress is not None:
            progress.update()
    with torch.no_grad():
        x = sample_cells(m.anima, m.neutral, [Cell(Guidance(m.w_neutral), c) for c in neutral_cfgs], noise,
                         steps=how.steps, shift=how.shift, chunk=1)
    pushed = _images(m.anima, x)  # (N, B, 3, H, W)
    zero = torch.stack([plain[list(how.cfgs).index(c), 0] for c in neutral_cfgs])  # (N, B, 3, H, W)
    frames.append(frame(torch.stack([zero, pushed], dim=1), m.name, "plain", "neutral", m.w_neutral, neutral_cfgs,
                        m.prompts))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------- from rows to numbers
def _wide(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """(cfg, row) x level table of one arm and pair."""
    return df.pivot_table(index=["cfg", "row", "prompt"], columns="level", values=value).sort_index()


def effects(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Per (model, arm, pair, cfg): guidance's effect E (dose - 0) and, for p+/p-, D = E - E_plain, paired."""
    out = []
    for (model, arm, pair), part in df.groupby(["model", "arm", "pair"], sort=False):
        t = _wide(part, "score")
        diff = (t["dose"] - t["0"]).rename("diff")
        plain = _wide(df[(df.model == model) & (df.arm == "plain") & (df.pair == "p+/p-")], "score")
        against = diff - (plain["dose"] - plain["0"])
        for cfg in diff.index.get_level_values("cfg").unique():
            d, a = diff.xs(cfg, level="cfg"), against.xs(cfg, level="cfg")
            e = clustered_mean(d.to_numpy(), d.index.get_level_values("prompt"), n_boot, seed)
            row = {"model": model, "arm": arm, "pair": pair, "cfg": cfg, "effect": e["mean"], "lo": e["lo"],
                   "hi": e["hi"], "mde": e["mde"], "n": e["n"]}
            if pair == "p+/p-" and arm != "plain":
                m = clustered_mean(a.to_numpy(), a.index.get_level_values("prompt"), n_boot, seed)
                row |= {"minus_plain": m["mean"], "mp_lo": m["lo"], "mp_hi": m["hi"], "mp_mde": m["mde"]}
            out.append(row)
    return pd.DataFrame(out)


def own_effects(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """The features' own effects at w = 0 and at the dose, pooled over CFG scales (per prompt: the mean over its
    scales and draws). Adapters: new-artist accuracy and its gain over the plain arm, paired by cell; Spectrum:
    the pixel error against full sampling, and its increase from w = 0 to the dose."""
    out = []
    if "novel" in df:
        hits = df[(df.pair == "p+/p-") & df.arm.isin(("plain", *ADAPTER_ARMS))].dropna(subset=["novel"])
        for (model, arm), part in hits.groupby(["model", "arm"], sort=False):
            t = _wide(part.assign(novel=part.novel.astype(float)), "novel")
            plain = _wide(hits[(hits.model == model) & (hits.arm == "plain")].assign(
                novel=lambda f: f.novel.astype(float)), "novel")
            for level in LEVELS:
                acc = clustered_mean(t[level], t.index.get_level_values("prompt"), n_boot, seed)
                gain = clustered_mean(t[level] - plain[level], t.index.get_level_values("prompt"), n_boot, seed)
                out.append({"model": model, "arm": arm, "what": "novel_accuracy", "level": level,
                            "value": acc["mean"], "lo": acc["lo"], "hi": acc["hi"], "gain": gain["mean"],
                            "gain_lo": gain["lo"], "gain_hi": gain["hi"], "gain_mde": gain["mde"]})
    if "error" in df:
        err = df[(df.arm == "spectrum") & (df.pair == "p+/p-")]
        for model, part in err.groupby("model", sort=False):
            t = _wide(part, "error")
            for level, values in (("0", t["0"]), ("dose", t["dose"]), ("increase", t["dose"] - t["0"])):
                e = clustered_mean(values, t.index.get_level_values("prompt"), n_boot, seed)
                out.append({"model": model, "arm": "spectrum", "what": "pixel_error", "level": level,
                            "value": e["mean"], "lo": e["lo"], "hi": e["hi"], "gain_mde": e["mde"]})
    return pd.DataFrame(out)


def forwards_saved(steps: int, cfg: SpectrumConfig) -> float:
    """Full sampling's DiT forwards over Spectrum's (the plan does not depend on w or CFG)."""
    return steps / sum(real_steps(steps, cfg))


def verdicts(eff: pd.DataFrame, own: pd.DataFrame, saves: float) -> pd.DataFrame:
    """The rules of the module docstring, per (feature, model), plus CFG's own row per model."""
    out = []
    pp = eff[eff.pair == "p+/p-"]
    for model, part in pp.groupby("model", sort=False):
        plain = part[part.arm == "plain"].set_index("cfg")
        readable = (plain.lo > 0) | (plain.hi < 0)
        out.append({"feature": "cfg", "model": model, "guidance": "stacks" if (plain.lo > 0).all() else
                    "does not stack", "own": "", "readable_cfgs": ",".join(f"{c:g}" for c in plain.index[readable])})
        for arm, rows in part[part.arm != "plain"].groupby("arm", sort=False):
            rows = rows.set_index("cfg")
            changes = ((rows.mp_lo > 0) | (rows.mp_hi < 0)).any()
            guidance = "changes" if changes else ("persists" if readable.any() else "unreadable")
            o = own[(own.model == model) & (own.arm == arm)]
            if arm == "spectrum":  # what is not kept is named: nothing cached, or an error that grows
                grows = o[o.level == "increase"].iloc[0].lo > 0.0
                kept = "saves nothing" if saves <= 1.0 else ("error grows" if grows else "kept")
            else:
                kept = "kept" if o[o.level == "dose"].iloc[0].gain_lo > 0 else "lost"
            out.append({"feature": arm, "model": model, "guidance": guidance, "own": kept,
                        "readable_cfgs": ",".join(f"{c:g}" for c in plain.index[readable])})
    v = pd.DataFrame(out)
    v["verdict"] = [("stacks" if g == "stacks" else "does not stack") if f == "cfg" else
                    ("persists" if g == "persists" and o == "kept" else f"guidance {g}, own effect: {o}")
                    for f, g, o in zip(v.feature, v.guidance, v.own, strict=True)]
    return v


def metrics(eff: pd.DataFrame, own: pd.DataFrame, verdict: pd.DataFrame) -> tuple[dict, dict]:
    """Flat metrics and their better direction: effects and differences (higher: guidance keeps or gains), MDEs,
    errors and the neutral pair's distance from 0 (lower), verdicts as 1 / 0 (higher)."""
    m, hib = {}, {}

    def put(key: str, value: float, higher: bool) -> None:
        m[key], hib[key] = float(value), higher

    for r in eff.itertuples():
        c = f"cfg{r.cfg:g}"
        if r.pair == "neutral":
            put(f"control/neutral_abs_effect/{r.model}/{c}", abs(r.effect), False)
            continue
        for k, v in (("effect", r.effect), ("effect_lo", r.lo), ("effect_hi", r.hi)):
            put(f"{r.model}/{r.arm}/{k}/{c}", v, True)
        if r.arm != "plain":
            for k, v in (("minus_plain", r.minus_plain), ("minus_plain_lo", r.mp_lo), ("minus_plain_hi", r.mp_hi)):
                put(f"{r.model}/{r.arm}/{k}/{c}", v, True)
            put(f"{r.model}/{r.arm}/minus_plain_mde/{c}", r.mp_mde, False)
    for r in own.itertuples():
        if r.what == "novel_accuracy":
            put(f"{r.model}/{r.arm}/novel_accuracy/{r.level}", r.value, True)
            for k, v in (("novel_gain", r.gain), ("novel_gain_lo", r.gain_lo), ("novel_gain_hi", r.gain_hi)):
                put(f"{r.model}/{r.arm}/{k}/{r.level}", v, True)
        else:
            for k, v in (("", r.value), ("_lo", r.lo), ("_hi", r.hi)):
                put(f"{r.model}/spectrum/pixel_error{k}/{r.level}", v, False)
    for r in verdict.itertuples():
        put(f"verdict/{r.feature}/{r.model}", r.verdict in ("persists", "stacks"), True)
    return m, hib
