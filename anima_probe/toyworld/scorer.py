"""A toy quality scorer: how good does an image look, measured without any learned image model?

It lets the toy experiments ask "did quality guidance raise the quality of the tiny model's samples?" with a
ruler whose errors we can measure: on toy images its score tracks the planted quality (Spearman >= 0.9).

Six hand-crafted measurements, each aimed at one planted degradation (see `world.degradation_strength`):
- noise_flat: Immerkaer's noise estimate (mean |3x3 second-difference filter|, which cancels locally linear
  content) over the flatter half of the image, so edges are not read as noise;
- sharpness: 98th percentile of the luminance gradient after a 3x3 median filter (blur lowers it);
- lap_ratio: Laplacian vs gradient at that percentile (crisp one-pixel edges vs soft ramps);
- edge_width: 2-pixel vs 1-pixel differences at the 98th percentile (wide, blurred edges raise it);
- blockiness: mean step across the 8x8 grid lines over the mean step elsewhere (block compression);
- levels: distinct 8-bit values holding >= 0.3 % of the pixels per channel (banding leaves few).
A ridge regression on the standardised measurements maps them to a score on the 1..9 quality scale; its
coefficients are fitted once by `fit_scorer` and shipped in `scorer_weights.json`. The fit sees half of its
images with faint Gaussian noise (sd up to `jitter_sd`), so it cannot lean on exact pixel values that a
generative model would never reproduce.

An honest floor. The ridge map is only valid where its measurements are in the range the world produces, and
destroyed images (noise, stripes, flat colour, a model driven far out of range) land outside it, where a linear map
can give them any score (uniform noise scored 3-4 and stripes 8-9 before the gate). `in_range` is the gate, fixed
from the world's construction and the fit data before any guidance result was read; an image out of range scores
`FLOOR`, the bottom of the 1..9 scale, and every in-range score is clipped to the scale:
- noise: more than the world's worst planted noise (q = 1, sd 0.08): noise_flat above its training maximum plus
  `NOISE_MARGIN` of its training range;
- levels: fewer distinct 8-bit values per channel than any fit image (the coarsest planted banding leaves 6, and
  no fit image has fewer than 3);
- jointly: a Mahalanobis distance of the six measurements from the fit images' mean, under their covariance, above
  `DISTANCE_FACTOR` x the largest distance of any fit image.
Held-out toy images and the shipped model's samples pass it (measured in tests and in reports/toyworld.md).

Known limitation, measured in tests: in the toy world all degradations grow together, so the fit need not
separate them; noise and banding alone lower the score, but blur alone does not (it also removes texture
that the noise measurement reads as noise). Do not read the score as a blur detector.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

FEATURE_NAMES: tuple[str, ...] = ("noise_flat", "sharpness", "lap_ratio", "edge_width", "blockiness", "levels")
WEIGHTS_FILE = "scorer_weights.json"
_CLIP_MARGIN = 0.25  # fraction of the training range an in-range measurement may go beyond before it is clipped
FLOOR, CEILING = 1.0, 9.0  # the quality scale; out-of-range images score FLOOR
NOISE_MARGIN = 0.1  # of noise_flat's training range: sensor-like slack above the world's worst noise
DISTANCE_FACTOR = 1.5  # x the largest fit-image Mahalanobis distance: a wide joint envelope, the hard cases are above


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3); got shape {x.shape} (add a batch axis for one image)")
    if min(x.shape[1:3]) < 16:
        raise ValueError(f"images must be at least 16x16 (the blockiness grid is 8 px); got {x.shape[1:3]}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    return np.clip(x, 0.0, 1.0)


def _median3(x: np.ndarray) -> np.ndarray:
    """3x3 spatial median per channel with edge padding."""
    h, w = x.shape[1:3]
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # (N, H+2, W+2, 3)
    stack = np.stack([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)  # (9, N, H, W, 3)
    return np.partition(stack, 4, axis=0)[4]  # the 5th of 9 is the median; ~8x faster than np.median here


def _level_counts(x: np.ndarray) -> np.ndarray:
    """Per image, the mean over channels of 8-bit values that hold at least 0.3 % of the pixels (>= 3)."""
    n, h, w, _ = x.shape
    q8 = np.clip(np.round(x * 255), 0, 255).astype(np.int64)  # (N, H, W, 3)
    offsets = (np.arange(n)[:, None] * 3 + np.arange(3)[None, :]) * 256  # (N, 3) one histogram per image/channel
    flat = (q8.reshape(n, h * w, 3) + offsets[:, None, :]).ravel()
    counts = np.bincount(flat, minlength=n * 3 * 256).reshape(n, 3, 256)
    return (counts >= max(3, 0.003 * h * w)).sum(axis=2).mean(axis=1)  # (N,)


def _noise_flat(x: np.ndarray) -> np.ndarray:
    """Immerkaer's estimate of the noise sd over the flatter half of each image: (N,)."""
    n = x.shape[0]
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None]  # (1, 3, 3)
    resp = np.mean([np.abs(ndimage.convolve(x[..., c], kernel, mode="nearest")) for c in range(3)], axis=0)
    smooth = ndimage.gaussian_filter(x.mean(axis=-1), sigma=(0, 1, 1))  # (N, H, W)
    grad = np.hypot(*np.gradient(smooth, axis=(1, 2)))
    flat = grad <= np.quantile(grad.reshape(n, -1), 0.5, axis=1)[:, None, None]  # (N, H, W)
    # sqrt(pi/2)/6 turns the mean absolute filter response into a Gaussian sd (Immerkaer 1996).
    return (resp * flat).sum(axis=(1, 2)) / flat.sum(axis=(1, 2)) * np.sqrt(np.pi / 2) / 6


def quality_features(images: np.ndarray) -> np.ndarray:
    """The six raw measurements, (N, 6) in FEATURE_NAMES order; images (N, H, W, 3) in [0, 1]."""
    x = _check_images(images)
    n = x.shape[0]
    lum = _median3(x).mean(axis=-1)  # (N, H, W) denoised luminance: sharpness must not reward noise
    d1 = np.concatenate([np.abs(np.diff(lum, axis=2)).reshape(n, -1),
                         np.abs(np.diff(lum, axis=1)).reshape(n, -1)], axis=1)  # (N, ~2HW)
    d2 = np.concatenate([np.abs(lum[:, :, 2:] - lum[:, :, :-2]).reshape(n, -1),
                         np.abs(lum[:, 2:] - lum[:, :-2]).reshape(n, -1)], axis=1)  # (N, ~2HW)
    lap = np.abs(4 * lum[:, 1:-1, 1:-1] - lum[:, 2:, 1:-1] - lum[:, :-2, 1:-1]
                 - lum[:, 1:-1, 2:] - lum[:, 1:-1, :-2]).reshape(n, -1)  # (N, (H-2)(W-2))
    g98 = np.quantile(d1, 0.98, axis=1)
    raw = x.mean(axis=-1)  # (N, H, W) undenoised: block edges are what the median filter would smooth
    dx, dy = np.abs(np.diff(raw, axis=2)), np.abs(np.diff(raw, axis=1))  # (N, H, W-1), (N, H-1, W)
    on_x, on_y = (np.arange(dx.shape[2]) % 8) == 7, (np.arange(dy.shape[1]) % 8) == 7
    across = dx[:, :, on_x].mean(axis=(1, 2)) + dy[:, on_y, :].mean(axis=(1, 2))
    within = dx[:, :, ~on_x].mean(axis=(1, 2)) + dy[:, ~on_y, :].mean(axis=(1, 2))
    # Small constants inside the logs keep clean, flat images finite and stop tiny values dominating.
    return np.column_stack([
        np.log(_noise_flat(x) + 2e-3),
        np.log(g98 + 1e-2),
        np.log((np.quantile(lap, 0.98, axis=1) + 1e-2) / (g98 + 1e-2)),
        np.log((np.quantile(d2, 0.98, axis=1) + 1e-2) / (g98 + 1e-2)),
        np.log((across + 1e-3) / (within + 1e-3)),
        np.log1p(_level_counts(x)),
    ])  # (N, 6)


@dataclass(frozen=True)
class ScorerWeights:
    """A fitted ridge map from standardised measurements to the 1..9 quality scale."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    lo: tuple[float, ...]  # training minimum of each raw measurement
    hi: tuple[float, ...]  # training maximum
    coef: tuple[float, ...]
    intercept: float
    alpha: float
    fitted_on: str  # the call that reproduces the fit, e.g. "fit_toyworld_scorer(n=1200, seed=1000, ...)"
    precision: tuple[tuple[float, ...], ...]  # inverse covariance of the raw fit measurements (6, 6)
    distance_max: float  # the largest Mahalanobis distance of a fit image from `mean`

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> ScorerWeights:
        missing = sorted(set(cls.__dataclass_fields__) - set(d))
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        if tuple(d["feature_names"]) != FEATURE_NAMES:
            raise ValueError(f"{source}: feature_names {d['feature_names']} != {list(FEATURE_NAMES)}")
        k = len(FEATURE_NAMES)
        for key in ("mean", "scale", "lo", "hi", "coef"):
            if len(d[key]) != k:
                raise ValueError(f"{source}: {key} has {len(d[key])} values, expected {k}")
        vec = {key: tuple(float(v) for v in d[key]) for key in ("mean", "scale", "lo", "hi", "coef")}
        precision = np.asarray(d["precision"], dtype=np.float64)
        if precision.shape != (k, k):
            raise ValueError(f"{source}: precision has shape {precision.shape}, expected ({k}, {k})")
        return cls(feature_names=FEATURE_NAMES, intercept=float(d["intercept"]), alpha=float(d["alpha"]),
                   fitted_on=str(d["fitted_on"]), precision=tuple(map(tuple, precision.tolist())),
                   distance_max=float(d["distance_max"]), **vec)


def fit_scorer(images: np.ndarray, qualities, alpha: float = 1.0, jitter_sd: float = 0.005, seed: int = 0,
               fitted_on: str = "") -> ScorerWeights:
    """Closed-form ridge of planted quality on the standardised measurements; deterministic for a seed.

    Half of the images (chosen by `seed`) get Gaussian noise of sd uniform in [0, jitter_sd] before measuring.
    """
    x = _check_images(images)
    y = np.asarray(qualities, dtype=np.float64)  # (N,)
    if y.shape != (x.shape[0],):
        raise ValueError(f"qualities must be one number per image: {y.shape} vs {x.shape[0]} images")
    rng = np.random.default_rng(seed)
    sd = rng.uniform(0.0, jitter_sd, (len(x), 1, 1, 1)) * (rng.random((len(x), 1, 1, 1)) < 0.5)
    f = quality_features(np.clip(x + sd * rng.standard_normal(x.shape), 0.0, 1.0))  # (N, 6)
    mean, scale = f.mean(axis=0), f.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant measurement carries no information, not a crash
    z = (f - mean) / scale  # (N, 6)
    coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))  # (6,)
    precision = np.linalg.pinv(np.cov(f, rowvar=False))  # (6, 6); pinv: a constant measurement is no error
    return ScorerWeights(FEATURE_NAMES, tuple(mean), tuple(scale), tuple(f.min(axis=0)), tuple(f.max(axis=0)),
                         tuple(coef), float(y.mean()), float(alpha), fitted_on, tuple(map(tuple, precision.tolist())),
                         float(_distance(f, mean, precision).max()))


def _distance(f: np.ndarray, mean, precision) -> np.ndarray:
    """Mahalanobis distance of measurements (N, 6) from `mean`: (N,)."""
    d = f - np.asarray(mean)  # (N, 6)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(precision), d), 0.0))


def fit_toyworld_scorer(n: int = 1200, seed: int = 1000, size: int = 32, alpha: float = 1.0,
                        jitter_sd: float = 0.005) -> ScorerWeights:
    """The fit behind the shipped scorer_weights.json: ridge on `n` fresh toy images of this seed."""
    from anima_probe.toyworld.world import generate  # local: the world is only needed to refit

    toys = generate(n, seed, size)
    return fit_scorer(np.stack([t.image for t in toys]), [t.quality for t in toys], alpha, jitter_sd, seed,
                      fitted_on=f"fit_toyworld_scorer(n={n}, seed={seed}, size={size}, alpha={alpha}, "
                                f"jitter_sd={jitter_sd})")


@lru_cache(maxsize=1)
def load_scorer_weights() -> ScorerWeights:
    """The shipped coefficients (anima_probe/toyworld/scorer_weights.json)."""
    ref = resources.files("anima_probe.toyworld") / WEIGHTS_FILE
    try:
        d = json.loads(ref.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise RuntimeError(f"cannot read the shipped scorer weights {ref}: {err}") from err
    return ScorerWeights.from_dict(d, source=str(ref))


def _in_range(f: np.ndarray, w: ScorerWeights) -> np.ndarray:
    """(N,) bool for measurements (N, 6): the gate of the module docstring."""
    lo, hi = np.asarray(w.lo), np.asarray(w.hi)
    noise, levels = FEATURE_NAMES.index("noise_flat"), FEATURE_NAMES.index("levels")
    quiet = f[:, noise] <= hi[noise] + NOISE_MARGIN * (hi[noise] - lo[noise])
    banded_at_most = f[:, levels] >= lo[levels] - 1e-9  # lo is a log count: equality is the fewest levels seen
    return quiet & banded_at_most & (_distance(f, w.mean, w.precision) <= DISTANCE_FACTOR * w.distance_max)


def in_range(images: np.ndarray, weights: ScorerWeights | None = None) -> np.ndarray:
    """(N,) bool: True where the scorer can read an image (N, H, W, 3); False ones score `FLOOR`."""
    return _in_range(quality_features(images), weights if weights is not None else load_scorer_weights())


def quality_score(images: np.ndarray, weights: ScorerWeights | None = None) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] -> (N,) score on the 1..9 quality scale, higher = better; `FLOOR` out of range."""
    w = weights if weights is not None else load_scorer_weights()
    f = quality_features(images)  # (N, 6)
    lo, hi = np.asarray(w.lo), np.asarray(w.hi)
    margin = _CLIP_MARGIN * (hi - lo)
    z = (np.clip(f, lo - margin, hi + margin) - np.asarray(w.mean)) / np.asarray(w.scale)  # (N, 6)
    score = np.clip(z @ np.asarray(w.coef) + w.intercept, FLOOR, CEILING)
    return np.where(_in_range(f, w), score, FLOOR)


def reference_ood_images(n: int = 8, seed: int = 0, size: int = 32) -> dict[str, np.ndarray]:
    """Known destroyed images, (n, size, size, 3) per kind, that must all score `FLOOR`: what a broken sampler
    draws (noise, saturated speckle, stripes, checkerboards) and what carries no picture at all (flat colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    periods = [1 + k % 8 for k in range(n)]  # 1..8 px
    two = rng.random((n, 2, 3))  # two random colours per image
    stripes = [((xx if k % 2 else yy) // p) % 2 for k, p in enumerate(periods)]
    checks = [((xx // p) + (yy // p)) % 2 for p in periods]
    return {
        "uniform noise": rng.random((n, size, size, 3)),
        "gaussian noise": np.clip(0.5 + 0.25 * rng.standard_normal((n, size, size, 3)), 0, 1),
        "saturated noise": (rng.random((n, size, size, 3)) > 0.5).astype(np.float64),
        "flat colour": np.broadcast_to(rng.random((n, 1, 1, 3)), (n, size, size, 3)).copy(),
        "stripes": np.stack([np.where(s[..., None] == 1, c[0], c[1]) for s, c in zip(stripes, two, strict=True)]),
        "checkerboard": np.stack([np.where(s[..., None] == 1, c[0], c[1]) for s, c in zip(checks, two, strict=True)]),
    }


def validity(n: int = 1000, seed: int = 2000, ood_n: int = 8) -> tuple[dict[str, float], str]:
    """The scorer's credentials: Spearman with planted quality and the in-range share on `n` held-out toy images
    (a seed no fit used), and per destroyed kind (`reference_ood_images`) the in-range share and the highest score.
    Returns (metrics, csv of the per-kind table)."""
    from scipy.stats import spearmanr

    from anima_probe.toyworld.world import generate  # local: the world is only needed here and to refit

    toys = generate(n, seed)
    images = np.stack([t.image for t in toys])
    score = quality_score(images)
    metrics = {"scorer/heldout_spearman": float(spearmanr(score, [t.quality for t in toys])[0]),
               "scorer/heldout_in_range": float(in_range(images).mean())}
    rows = ["kind,images,in_range,mean_score,max_score", f"held-out toy images (seed {seed}),{n},"
            f"{metrics['scorer/heldout_in_range']:.4f},{score.mean():.4f},{score.max():.4f}"]
    for kind, ood in reference_ood_images(ood_n).items():
        s, ok = quality_score(ood), in_range(ood)
        key = kind.replace(" ", "_")
        metrics |= {f"scorer/ood_max/{key}": float(s.max()), f"scorer/ood_in_range/{key}": float(ok.mean())}
        rows.append(f"{kind},{len(ood)},{ok.mean():.4f},{s.mean():.4f},{s.max():.4f}")
    return metrics, "\n".join(rows) + "\n"
