"""The toy world: which planted factor (artist, content, quality, resolution) does a tiny Anima learn, and how?

Every image is drawn from four known factors, so a model trained on them can be checked against ground truth:
- artist: a rendering style (palette, outline weight, texture, shading) independent of what is drawn;
- content: one of the proposal's 8 content types, drawn as a simple scene with a random layout;
- quality: 1..9; blur, block compression, noise and colour banding grow as the score falls;
- resolution: drawn large and downsampled (sharp) or drawn small and upsampled (soft), correlated with
  quality with a strength that differs by content (the proposal's "per-content quality <> resolution" claim).
Images are (H, W, 3) float32 in [0, 1]. Everything is seeded per item, so `generate(n, s)[:k] == generate(k, s)`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.toyworld.drawing import ALL_STYLES, ARTISTS, NOVEL_ARTISTS, SCENES, draw

CONTENT_TAGS: dict[str, tuple[str, ...]] = {
    "solo character": ("1girl", "solo"),
    "group scene": ("multiple girls", "group"),
    "landscape": ("scenery", "landscape", "no humans"),
    "action": ("1boy", "fighting", "action"),
    "mecha": ("mecha", "robot", "no humans"),
    "still life": ("still life", "fruit", "no humans"),
    "abstract": ("abstract", "pattern"),
    "portrait": ("1girl", "portrait", "close-up"),
}
CONTENT_TYPES: tuple[str, ...] = tuple(CONTENT_TAGS)
QUALITY_LEVELS: tuple[int, ...] = tuple(range(1, 10))
# "none" is a level without a caption tag: the ordinary, untagged resolution.
RESOLUTION_TAGS: tuple[str, ...] = ("absurdres", "highres", "none", "lowres")
# Drawing scale relative to the output size: >1 is drawn large and box-downsampled, <1 drawn small and upsampled.
RESOLUTION_SCALE: dict[str, float] = {"absurdres": 4.0, "highres": 2.0, "none": 1.0, "lowres": 0.5}
# Planted per-content strength of quality -> resolution (slope of a latent ordinal model, see sample_factors).
RESOLUTION_QUALITY_SLOPE: dict[str, float] = {
    "solo character": 1.0, "group scene": 0.7, "landscape": 1.4, "action": 0.5,
    "mecha": 1.2, "still life": 0.3, "abstract": 0.0, "portrait": 0.9,
}
# Cumulative marginal shares lowres .15 / none .35 / highres .30 / absurdres .20 as standard-normal cut points.
_RESOLUTION_CUTS = (-1.0364, 0.0, 0.8416)
_RESOLUTION_ORDER = ("lowres", "none", "highres", "absurdres")
_QUALITY_SD = math.sqrt((len(QUALITY_LEVELS) ** 2 - 1) / 12)  # sd of a discrete uniform on 1..9


@dataclass(frozen=True)
class ToyImage:
    id: str
    caption: str
    artist: str
    content: str
    quality: int
    resolution: str
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]


def _check_factors(artist: str, content: str, quality: int, resolution: str) -> None:
    if artist not in ALL_STYLES:
        raise ValueError(f"unknown artist {artist!r}; expected one of {ARTISTS + NOVEL_ARTISTS}")
    if content not in CONTENT_TAGS:
        raise ValueError(f"unknown content {content!r}; expected one of {CONTENT_TYPES}")
    if isinstance(quality, bool) or int(quality) != quality or quality not in QUALITY_LEVELS:
        raise ValueError(f"quality must be an integer in 1..9, got {quality!r}")
    if resolution not in RESOLUTION_SCALE:
        raise ValueError(f"unknown resolution {resolution!r}; expected one of {RESOLUTION_TAGS}")


def _item_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One independent stream per (purpose, item): item i never depends on how many items were asked for."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


# ----------------------------------------------------------------------------------------------------------------
# Resampling and degradation.


def _upsample2(img: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling on pixel centres: the soft look of a small image blown up."""
    for axis in (0, 1):
        a = np.moveaxis(img, axis, 0)
        prev, nxt = np.concatenate([a[:1], a[:-1]]), np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
        out[0::2], out[1::2] = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        img = np.moveaxis(out, 0, axis)
    return img


def _resample(img: np.ndarray, size: int) -> np.ndarray:
    n = img.shape[0]
    if n > size:  # box filter: the clean antialiasing of a downsampled large drawing
        k = n // size
        return img.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    while img.shape[0] < size:
        img = _upsample2(img)
    return img


def degradation_strength(quality: int, jitter: float = 0.0) -> dict[str, float]:
    """The planted degradations at a quality level; severity is 0 at q=9 and 1 at q=1, linear in between.

    `jitter` shifts the severity (render uses +-0.03, a quarter of the 0.125 gap between levels, so an image's
    strengths never cross a neighbouring level's).
    """
    top, bottom = QUALITY_LEVELS[-1], QUALITY_LEVELS[0]
    s = float(np.clip((top - quality) / (top - bottom) + jitter, 0.0, 1.0)) if quality < top else 0.0
    return {"severity": s, "blur_sigma_px": 1.1 * s, "block_step": 0.12 * s, "noise_sd": 0.08 * s,
            "levels": float(round(2 ** (8 - 5.5 * s))) if s > 0 else math.inf}


def _block_compress(img: np.ndarray, step: float) -> np.ndarray:
    """JPEG-like: quantise each 8x8 block's DCT, coarser at high frequency, which leaves 8x8 block edges."""
    h, w, _ = img.shape
    blocks = img.reshape(h // 8, 8, w // 8, 8, 3)  # (bh, 8, bw, 8, 3)
    coef = fft.dctn(blocks, axes=(1, 3), norm="ortho")
    f = np.arange(8)
    q = (step * (1 + f[:, None] + f[None, :]))[None, :, None, :, None]  # (1, 8, 1, 8, 1)
    coef = np.round(coef / q) * q
    return fft.idctn(coef, axes=(1, 3), norm="ortho").reshape(h, w, 3)


def _degrade(img: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """Blur -> block compression -> noise -> banding; that order keeps each one measurable in the result."""
    if quality == QUALITY_LEVELS[-1]:
        return img
    st = degradation_strength(quality, jitter=rng.uniform(-0.03, 0.03))
    img = ndimage.gaussian_filter(img, sigma=(st["blur_sigma_px"], st["blur_sigma_px"], 0), mode="nearest")
    img = _block_compress(img, st["block_step"])
    img = img + rng.normal(0.0, st["noise_sd"], img.shape)
    levels = int(st["levels"])
    return np.round(np.clip(img, 0.0, 1.0) * (levels - 1)) / (levels - 1)


def render(artist: str, content: str, quality: int, resolution: str, rng: np.random.Generator,
           size: int = 32) -> np.ndarray:
    """Draw one image of the given factors: (size, size, 3) float32 in [0, 1]."""
    _check_factors(artist, content, quality, resolution)
    if size < 16 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 16 (8x8 blocks, 2x lowres), got {size}")
    n = int(round(size * RESOLUTION_SCALE[resolution]))
    img = _resample(draw(SCENES[content](rng), ALL_STYLES[artist], n, size, rng), size)  # (size, size, 3)
    return np.clip(_degrade(img, int(quality), rng), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Captions, the joint factor distribution, and the manifest.


def quality_tags(quality: int) -> tuple[str, ...]:
    """`score_q`, plus `masterpiece, best quality` for q >= 8 and `worst quality, low quality` for q <= 2."""
    extra = ("masterpiece", "best quality") if quality >= 8 else ("worst quality", "low quality") if quality <= 2 else ()
    return (f"score_{quality}",) + extra


def caption_for(artist: str, content: str, quality: int, resolution: str, rng: np.random.Generator) -> str:
    """Anima-style tags: shuffled meta block (score, quality words, resolution), content tags, artist once."""
    _check_factors(artist, content, quality, resolution)
    meta = list(quality_tags(int(quality))) + ([resolution] if resolution != "none" else [])
    meta = [meta[i] for i in rng.permutation(len(meta))]
    content_tags = list(CONTENT_TAGS[content])
    # The artist tag sits either right after the meta block or at the end, as both occur in Anima prompts.
    tags = meta + [artist] + content_tags if rng.random() < 0.5 else meta + content_tags + [artist]
    return ", ".join(tags)


def _sample_resolution(content: str, quality: int, rng: np.random.Generator) -> str:
    """Ordinal probit: latent = slope_c * z(quality) + N(0, 1), cut at fixed shares after rescaling to unit sd.

    Rescaling by sqrt(1 + slope^2) keeps the resolution marginal (about 15/35/30/20 %) the same for every
    content, so only the strength of the quality link differs between contents.
    """
    slope = RESOLUTION_QUALITY_SLOPE[content]
    z = (quality - 5) / _QUALITY_SD
    latent = (slope * z + rng.standard_normal()) / math.sqrt(1.0 + slope * slope)
    return _RESOLUTION_ORDER[int(np.searchsorted(_RESOLUTION_CUTS, latent))]


def sample_factors(n: int, seed: int, artists: tuple[str, ...] = ARTISTS) -> list[dict]:
    """n draws of {artist, content, quality, resolution}: artist (from `artists`), content, quality uniform and
    independent; resolution depends on quality with a per-content strength (RESOLUTION_QUALITY_SLOPE)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not artists:
        raise ValueError("artists must name at least one artist")
    for a in artists:
        _check_factors(a, CONTENT_TYPES[0], QUALITY_LEVELS[0], RESOLUTION_TAGS[0])
    out = []
    for i in range(n):
        rng = _item_rng(seed, 0, i)
        artist = artists[int(rng.integers(len(artists)))]
        content = CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
        quality = int(rng.integers(QUALITY_LEVELS[0], QUALITY_LEVELS[-1] + 1))
        out.append({"artist": artist, "content": content, "quality": quality,
                    "resolution": _sample_resolution(content, quality, rng)})
    return out


def _captions(factors: list[dict], seed: int) -> list[str]:
    return [caption_for(f["artist"], f["content"], f["quality"], f["resolution"], _item_rng(seed, 2, i))
            for i, f in enumerate(factors)]


def captions(n: int, seed: int, artists: tuple[str, ...] = ARTISTS) -> list[str]:
    """The captions of `generate(n, seed, artists=...)` without drawing a pixel (what a record of the training
    vocabulary needs)."""
    return _captions(sample_factors(n, seed, artists), seed)


def generate(n: int, seed: int, size: int = 32, artists: tuple[str, ...] = ARTISTS) -> list[ToyImage]:
    """n captioned toy images; item i depends only on (seed, i), so a longer run extends a shorter one.
    `artists` picks whose styles are drawn (default: the twelve the toy model was trained on)."""
    factors = sample_factors(n, seed, artists)
    images = []
    for i, (f, caption) in enumerate(zip(factors, _captions(factors, seed), strict=True)):
        img = render(f["artist"], f["content"], f["quality"], f["resolution"], _item_rng(seed, 1, i), size)
        images.append(ToyImage(id=f"toy-s{seed}-{i:06d}", caption=caption, image=img, **f))
    return images


MANIFEST_COLUMNS = ("id", "caption", "artist", "content", "quality", "resolution")


def write_manifest(images: list[ToyImage], path: str | os.PathLike) -> None:
    """CSV of the factors and captions (no pixels), written atomically."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(MANIFEST_COLUMNS)
    for im in images:
        w.writerow([im.id, im.caption, im.artist, im.content, im.quality, im.resolution])
    atomic_write_text(path, buf.getvalue())


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest as dicts (quality as int), checked against the known factor levels."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: header {reader.fieldnames} != expected {list(MANIFEST_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                row["quality"] = int(row["quality"])
                _check_factors(row["artist"], row["content"], row["quality"], row["resolution"])
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
            rows.append(row)
    return rows
