"""Does modulation guidance shift colours more under some samplers, schedules or Spectrum than under others?

Users reported colour drift with ``bong_tangent`` and were told "only ``simple`` is safe"; the Spectrum sampler's
notes reported more endpoint drift with karras / exponential and with ancestral / SDE samplers. Here every
sampler x schedule x Spectrum arm samples the same prompts from the same noise at w = 0 and at the guided weights,
and the drift of a guided image is measured against the *w = 0 image of the same arm* (so only guidance's part is
counted): the mean channel shift (guided - reference, per RGB channel, averaged over pixels; ``shift`` is its
length) and the change of mean HSV saturation. w = 0 is the family's base model, not "no modulation": a family that
always adds the prompt's own projection (``pooled_text_proj``) changes the image at w = 0 already, so that part
(w = 0 against no modulation, comparison "base") and Spectrum's own drift (its w = 0 image against the full arm's,
comparison "spectrum") are measured the same way and reported beside it. The statistic is per image; intervals
are percentile bootstraps over prompts (one image per prompt).

The decision rules, fixed before the first run: "bong_tangent drifts" holds for a sampler when the paired
difference shift(bong_tangent) - shift(simple) at the largest w has a 95 % interval above 0; "only simple is safe"
holds when that is true of all five other schedules. Controls: guidance whose Eq. 3 direction is zero (p+ = p-) at
the largest w must drift by exactly 0 (negative), and a planted shift of the red channel must be recovered by the
statistic (positive).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from anima_probe.guidance.guided import Cell, Guidance, GuidedPrompts, sample_cells
from anima_probe.guidance.samplers import SAMPLERS
from anima_probe.guidance.sigmas import SCHEDULES
from anima_probe.guidance.spectrum import SpectrumConfig
from anima_probe.probes.stats import bootstrap_ci

CHANNELS = ("r", "g", "b")


def colour_stats(images: torch.Tensor) -> np.ndarray:
    """(N, 4): mean R, G, B and mean HSV saturation ((max - min) / max, 0 on black) of (N, 3, H, W) in [0, 1]."""
    x = images.float().clamp(0, 1)
    hi, lo = x.max(dim=1).values, x.min(dim=1).values  # (N, H, W)
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-8), torch.zeros_like(hi))  # (N, H, W)
    return torch.cat([x.mean(dim=(2, 3)), sat.mean(dim=(1, 2))[:, None]], dim=1).numpy()  # (N, 4)


def drift(images: torch.Tensor, reference: torch.Tensor) -> pd.DataFrame:
    """Per image: channel shifts d_r, d_g, d_b, their length ``shift`` and the saturation change ``d_sat``."""
    d = colour_stats(images) - colour_stats(reference)  # (N, 4)
    df = pd.DataFrame(d, columns=[f"d_{c}" for c in CHANNELS] + ["d_sat"])
    df.insert(3, "shift", np.linalg.norm(d[:, :3], axis=1))
    return df


def _images(anima, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = anima.decode(x.flatten(0, 1))  # (K*B, 3, H, W) in [0, 1]
    return out.view(*x.shape[:2], *out.shape[1:])  # (K, B, 3, H, W)


def sweep(anima, gp: GuidedPrompts, noise: torch.Tensor, ws: Sequence[float], *, cfg: float, steps: int,
          spectrum: SpectrumConfig, seed: int = 0, samplers: Sequence[str] = tuple(SAMPLERS),
          schedules: Sequence[str] = tuple(SCHEDULES), progress=None) -> pd.DataFrame:
    """One row per (sampler, schedule, arm, comparison, prompt row): guidance drift at every w against w = 0, the
    base model's own drift (w = 0 against no modulation, comparison "base"), and Spectrum's own drift (w = 0 with
    Spectrum against without, comparison "spectrum"); ``w`` is NaN for the last two."""
    frames = []
    cells = [Cell(Guidance(0.0), cfg)] + [Cell(Guidance(w), cfg) for w in ws] + [Cell(None, cfg)]
    for sampler in samplers:
        for schedule in schedules:
            arms = {}
            for arm, spec in (("full", None), ("spectrum", spectrum)):
                arm_cells = cells if spec is None else cells[:-1]  # the base's own drift: once, without Spectrum
                arms[arm] = _images(anima, sample_cells(anima, gp, arm_cells, noise, steps=steps, sampler=sampler,
                                                        seed=seed, schedule=schedule, spectrum=spec))
                for k, w in enumerate(ws, start=1):
                    frames.append(drift(arms[arm][k], arms[arm][0]).assign(
                        sampler=sampler, schedule=schedule, arm=arm, comparison="guidance", w=w,
                        row=range(len(gp))))
                if spec is None:
                    frames.append(drift(arms[arm][0], arms[arm][-1]).assign(
                        sampler=sampler, schedule=schedule, arm=arm, comparison="base", w=np.nan,
                        row=range(len(gp))))
                if progress is not None:
                    progress.update()
            frames.append(drift(arms["spectrum"][0], arms["full"][0]).assign(
                sampler=sampler, schedule=schedule, arm="spectrum", comparison="spectrum", w=np.nan,
                row=range(len(gp))))
    return pd.concat(frames, ignore_index=True)


def mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95 % interval over the items (prompts)."""
    values = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(lambda idx: float(values[idx].mean()), len(values), n_boot, seed)
    return float(values.mean()), lo, hi


def summary(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Mean shift and saturation change with intervals per (comparison, sampler, schedule, arm, w)."""
    rows = []
    keys = ["comparison", "sampler", "schedule", "arm", "w"]
    for key, g in df.groupby(keys, dropna=False, sort=False):
        s, s_lo, s_hi = mean_ci(g["shift"].to_numpy(), n_boot, seed)
        d, d_lo, d_hi = mean_ci(g["d_sat"].to_numpy(), n_boot, seed)
        rows.append(dict(zip(keys, key)) | {"shift": s, "shift_lo": s_lo, "shift_hi": s_hi, "d_sat": d,
                                            "d_sat_lo": d_lo, "d_sat_hi": d_hi, "n": len(g)})
    return pd.DataFrame(rows)


def schedule_contrasts(df: pd.DataFrame, w: float, n_boot: int, seed: int) -> pd.DataFrame:
    """Per sampler and arm, each schedule's shift minus simple's at ``w``, paired by prompt, with its interval and
    the minimum detectable difference (2.8 sd / sqrt(n): 80 % power at two-sided 5 %)."""
    g = df[(df.comparison == "guidance") & (df.w == w)]
    rows = []
    for (sampler, arm), part in g.groupby(["sampler", "arm"], sort=False):
        wide = part.pivot(index="row", columns="schedule", values="shift")
        for schedule in [s for s in wide.columns if s != "simple"]:
            diff = (wide[schedule] - wide["simple"]).to_numpy()
            m, lo, hi = mean_ci(diff, n_boot, seed)
            mde = 2.8 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            rows.append({"sampler": sampler, "arm": arm, "schedule": schedule, "minus_simple": m, "lo": lo,
                         "hi": hi, "mde": mde, "above": lo > 0})
    return pd.DataFrame(rows)


def planted_recovery(images: torch.Tensor, offset: float = 0.05) -> float:
    """The positive control: the statistic's d_r for images whose red channel is raised by ``offset`` (kept in
    [0, 1]: the recovered value is the offset minus what clipping at 1 removes)."""
    planted = images.clone()
    planted[:, 0] = (planted[:, 0] + offset).clamp(0, 1)
    return float(drift(planted, images)["d_r"].mean())
