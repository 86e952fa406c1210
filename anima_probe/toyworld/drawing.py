"""How does an artist draw a scene? The toy world's renderer before resampling and degradation.

An artist (`ArtistStyle`) is a palette, an outline, a texture and a shading, independent of what is drawn; a scene
(`SCENES`, one per content type) is a random layout of simple shapes, each a signed distance field with a palette
role. `draw` paints a scene in a style at n x n pixels; `anima_probe.toyworld.world` picks the factors, resamples
to the output size (the resolution factor) and degrades it (the quality factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArtistStyle:
    """How one artist draws: palette roles bg, light, primary, secondary, accent, dark (hex)."""

    palette: tuple[str, str, str, str, str, str]
    outline: str
    outline_px: float  # outline width in output pixels; 0 = no outline
    texture: str  # flat | hatch | crosshatch | dots | stripes
    shading: str  # flat | cel | gradient


STYLES: dict[str, ArtistStyle] = {
    "@kiri_ama": ArtistStyle(("#fdf0f5", "#ffe4d6", "#f4a7c0", "#c9b6e8", "#fff1a8", "#8a6f9e"), "#8a6f9e", 0.7, "flat", "gradient"),
    "@sumi_kuro": ArtistStyle(("#f2f0ea", "#d9d6cf", "#8c8a85", "#5e5c58", "#b5b2ab", "#1c1b1a"), "#0d0d0d", 1.3, "hatch", "cel"),
    "@natsu_hiro": ArtistStyle(("#ffe08a", "#ffd1a3", "#e8402a", "#f28c1c", "#fff25c", "#7a1d0e"), "#3a0d05", 1.6, "flat", "cel"),
    "@aoi_mizu": ArtistStyle(("#d8eef7", "#f0f8ff", "#2f7fc1", "#4fc1c9", "#a9e4ff", "#143a66"), "#143a66", 0.0, "dots", "gradient"),
    "@mori_no_ki": ArtistStyle(("#e9e2c8", "#d8c9a3", "#4f7a3a", "#8a5a2b", "#c7b04a", "#2e3b1f"), "#2e3b1f", 0.8, "crosshatch", "flat"),
    "@neon_yoru": ArtistStyle(("#120b2a", "#3a2f6b", "#ff2bd6", "#19e3ff", "#f8ff3a", "#060312"), "#19e3ff", 1.0, "flat", "gradient"),
    "@sepia_ren": ArtistStyle(("#efe0c2", "#e3c99b", "#a8784a", "#c49a6c", "#7a5230", "#4a2f1a"), "#4a2f1a", 1.0, "hatch", "gradient"),
    "@pop_kyu": ArtistStyle(("#ffffff", "#ffe7c2", "#e3161f", "#1f4fe3", "#ffd60a", "#111111"), "#000000", 1.6, "dots", "flat"),
    "@yuki_shiro": ArtistStyle(("#f4f8fb", "#ffffff", "#c8d8e8", "#e6eef5", "#9fc4e0", "#7d8fa3"), "#7d8fa3", 0.7, "flat", "cel"),
    "@akane_iro": ArtistStyle(("#f6ecd8", "#f3d3b8", "#b3122e", "#2a1a1f", "#e8b04a", "#1a0d10"), "#1a0d10", 1.0, "stripes", "cel"),
    "@hana_saki": ArtistStyle(("#eefbe8", "#ffe3d3", "#9fdc8c", "#ffb39a", "#ffe07a", "#5c8a6a"), "#5c8a6a", 0.0, "dots", "cel"),
    "@gin_tetsu": ArtistStyle(("#5a6470", "#aab4bf", "#3d4a5a", "#7d8b99", "#ff7a1a", "#1d242c"), "#101418", 1.0, "crosshatch", "gradient"),
}
ARTISTS: tuple[str, ...] = tuple(STYLES)
# Styles the shipped toy model never saw, for adapters (LoRA) to teach it. Kept out of STYLES / ARTISTS so that
# sample_factors, every seed's images and the 12-artist experiments stay exactly as they were; ask for them by name
# (`generate(..., artists=NOVEL_ARTISTS)`). "@tsuki_hoshi" takes a texture x shading pair no artist has
# (stripes x gradient), a dark teal ground and a light outline, so a classifier can tell it from all twelve.
NOVEL_STYLES: dict[str, ArtistStyle] = {
    "@tsuki_hoshi": ArtistStyle(("#123e44", "#f6e7c8", "#ff7b5c", "#5cc8a8", "#ffd166", "#0a2226"), "#f6e7c8", 1.2, "stripes", "gradient"),
}
NOVEL_ARTISTS: tuple[str, ...] = tuple(NOVEL_STYLES)
ALL_STYLES = {**STYLES, **NOVEL_STYLES}
_ROLE = {"bg": 0, "light": 1, "primary": 2, "secondary": 3, "accent": 4, "dark": 5}


# ----------------------------------------------------------------------------------------------------------------
# Shapes as signed distance fields in normalised coordinates (x right, y down, both in [0, 1]); negative inside.
# Each returns (sdf, (cx, cy, extent)); the centre and extent drive per-shape shading.


def _circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r, (cx, cy, r)


def _ellipse(x, y, cx, cy, rx, ry):
    return (np.hypot((x - cx) / rx, (y - cy) / ry) - 1.0) * min(rx, ry), (cx, cy, max(rx, ry))


def _box(x, y, cx, cy, hw, hh, angle=0.0):
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    qx, qy = np.abs(u) - hw, np.abs(v) - hh
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0), (cx, cy, math.hypot(hw, hh))


def _capsule(x, y, x0, y0, x1, y1, r):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    d = np.hypot(x - x0 - t * dx, y - y0 - t * dy) - r
    return d, ((x0 + x1) / 2, (y0 + y1) / 2, math.hypot(dx, dy) / 2 + r)


def _poly(x, y, *pts):
    """Convex polygon: the max of signed distances to its edge lines (exact inside, close enough outside)."""
    p = np.asarray(pts, dtype=float).reshape(-1, 2)
    area = np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    d = None
    for (ax, ay), (bx, by) in zip(p, np.roll(p, -1, axis=0), strict=True):
        ex, ey = bx - ax, by - ay
        side = ((x - ax) * ey - (y - ay) * ex) / (math.hypot(ex, ey) + 1e-12)
        side = side if area > 0 else -side
        d = side if d is None else np.maximum(d, side)
    cx, cy = p.mean(axis=0)
    return d, (cx, cy, float(np.max(np.hypot(p[:, 0] - cx, p[:, 1] - cy))))


_SHAPES = {"circle": _circle, "ellipse": _ellipse, "box": _box, "capsule": _capsule, "poly": _poly}


# ----------------------------------------------------------------------------------------------------------------
# Scenes: content-only layouts as (shape, params, palette role) lists; the artist decides how they look.


def _figure(cx: float, base: float, h: float, girl: bool, clothes: str = "primary") -> list[tuple]:
    """A standing character of height h whose feet are at y = base."""
    hy = base - h + 0.12 * h  # head centre
    ops = [("ellipse", (cx, hy + 0.05 * h, 0.16 * h, 0.19 * h), "secondary")] if girl else []
    ops += [("capsule", (cx + sx * 0.05 * h, base - 0.4 * h, cx + sx * 0.07 * h, base - 0.03 * h, 0.045 * h), "dark")
            for sx in (-1, 1)]
    ops.append(("box", (cx, base - 0.56 * h, 0.11 * h, 0.17 * h), clothes))
    if girl:
        pts = (cx - 0.1 * h, base - 0.46 * h, cx + 0.1 * h, base - 0.46 * h,
               cx + 0.2 * h, base - 0.27 * h, cx - 0.2 * h, base - 0.27 * h)
        ops.append(("poly", pts, "accent"))
    ops += [("capsule", (cx + sx * 0.12 * h, base - 0.68 * h, cx + sx * 0.21 * h, base - 0.42 * h, 0.04 * h), "light")
            for sx in (-1, 1)]
    ops.append(("circle", (cx, hy, 0.12 * h), "light"))
    ops.append(("ellipse", (cx, hy - 0.06 * h, 0.13 * h, 0.07 * h), "secondary" if girl else "dark"))
    return ops


def _scene_solo(rng):
    return _figure(rng.uniform(0.35, 0.65), rng.uniform(0.9, 0.97), rng.uniform(0.72, 0.86), girl=True)


def _scene_group(rng):
    k = int(rng.integers(3, 5))
    xs = np.linspace(0.12, 0.88, k + 2)[1:-1] if k > 3 else np.array([0.22, 0.5, 0.78])
    ops = []
    for i, x in enumerate(xs):
        ops += _figure(x + rng.uniform(-0.03, 0.03), rng.uniform(0.86, 0.97), rng.uniform(0.45, 0.6), girl=True,
                       clothes=("primary", "accent", "dark")[i % 3])
    return ops


def _scene_landscape(rng):
    hz = rng.uniform(0.55, 0.72)  # horizon
    ops = [("circle", (rng.uniform(0.15, 0.85), rng.uniform(0.12, 0.3), rng.uniform(0.07, 0.11)), "accent")]
    for _ in range(int(rng.integers(1, 4))):
        px, w, ht = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35)
        ops.append(("poly", (px - w, hz + 0.01, px + w, hz + 0.01, px, hz - ht), "secondary"))
    ops.append(("box", (0.5, (hz + 1.0) / 2 + 0.02, 0.6, (1.0 - hz) / 2 + 0.02), "primary"))
    if rng.random() < 0.5:
        tx = rng.uniform(0.1, 0.9)
        ops += [("capsule", (tx, hz + 0.12, tx, hz - 0.05, 0.02), "dark"), ("circle", (tx, hz - 0.1, 0.08), "secondary")]
    return ops


def _scene_action(rng):
    cx, base, h = rng.uniform(0.3, 0.45), rng.uniform(0.9, 0.97), rng.uniform(0.7, 0.82)
    hy = base - 0.88 * h
    ops = [("capsule", (0.02, y, cx - 0.2 * h, y, 0.012), "dark") for y in rng.uniform(0.3, 0.8, 3)]
    ops += [("capsule", (cx, base - 0.45 * h, cx + sx * 0.22 * h, base - 0.02 * h, 0.045 * h), "dark") for sx in (-1, 1)]
    ops.append(("box", (cx, base - 0.6 * h, 0.1 * h, 0.17 * h, 0.25), "primary"))
    fist = (cx + 0.45 * h, base - 0.72 * h)
    ops.append(("capsule", (cx + 0.05 * h, base - 0.7 * h, *fist, 0.045 * h), "light"))
    ops.append(("capsule", (cx - 0.05 * h, base - 0.7 * h, cx - 0.25 * h, base - 0.55 * h, 0.04 * h), "light"))
    # Impact burst: a six-pointed star drawn as two overlapping triangles around the fist.
    r = 0.2 * h
    for a in (0.0, math.pi / 3):
        pts = [c for k in range(3) for c in (fist[0] + r * math.cos(a + 2.094 * k), fist[1] + r * math.sin(a + 2.094 * k))]
        ops.append(("poly", tuple(pts), "accent"))
    ops += [("circle", (cx + 0.03 * h, hy, 0.12 * h), "light"),
                   ("ellipse", (cx + 0.01 * h, hy - 0.06 * h, 0.13 * h, 0.07 * h), "dark")]
    return ops


def _scene_mecha(rng):
    cx, base, h = rng.uniform(0.38, 0.62), rng.uniform(0.92, 0.98), rng.uniform(0.75, 0.9)
    ops = [("capsule", (cx + 0.05 * h, base - 0.92 * h, cx + 0.09 * h, base - 1.02 * h, 0.012), "dark")]
    for sx in (-1, 1):
        ops += [("box", (cx + sx * 0.08 * h, base - 0.25 * h, 0.06 * h, 0.2 * h), "primary"),
                ("box", (cx + sx * 0.1 * h, base - 0.035 * h, 0.09 * h, 0.035 * h), "dark"),
                ("box", (cx + sx * 0.26 * h, base - 0.53 * h, 0.05 * h, 0.14 * h), "primary"),
                ("box", (cx + sx * 0.24 * h, base - 0.72 * h, 0.08 * h, 0.065 * h), "primary")]
    ops += [("box", (cx, base - 0.58 * h, 0.16 * h, 0.16 * h), "secondary"),
            ("box", (cx, base - 0.6 * h, 0.06 * h, 0.05 * h), "accent"),
            ("box", (cx, base - 0.84 * h, 0.09 * h, 0.075 * h), "secondary"),
            ("box", (cx, base - 0.85 * h, 0.07 * h, 0.018 * h), "accent")]
    return ops


def _scene_still_life(rng):
    top = rng.uniform(0.62, 0.74)  # table surface
    ops = [("box", (0.5, (top + 1.0) / 2 + 0.02, 0.6, (1.0 - top) / 2 + 0.02), "secondary"),
           ("box", (0.5, top + 0.015, 0.6, 0.012), "dark")]
    vx = rng.choice([rng.uniform(0.15, 0.28), rng.uniform(0.72, 0.85)])
    ops += [("ellipse", (vx, top - 0.12, 0.09, 0.13), "primary"), ("box", (vx, top - 0.27, 0.035, 0.06), "primary")]
    bx = 1.0 - vx + rng.uniform(-0.05, 0.05)  # the bowl sits opposite the vase
    for i in range(int(rng.integers(2, 5))):
        r = rng.uniform(0.06, 0.085)
        ops.append(("circle", (bx + rng.uniform(-0.12, 0.12), top - 0.07 - r * rng.uniform(0.3, 1.2), r),
                    ("accent", "light", "primary")[i % 3]))
    ops.append(("poly", (bx - 0.2, top - 0.09, bx + 0.2, top - 0.09, bx + 0.12, top, bx - 0.12, top), "dark"))
    return ops


def _scene_abstract(rng):
    kind = int(rng.integers(3))
    roles = ("primary", "accent", "secondary", "dark")
    if kind == 0:  # tiled grid of circles / diamonds
        k, ph, ops = int(rng.integers(3, 5)), rng.uniform(0, 0.5), []
        for i in range(k + 1):
            for j in range(k + 1):
                cx, cy, r = (i + ph) / k, (j + ph) / k, 0.32 / k
                ops.append(("circle", (cx, cy, r), roles[(i + j) % 2]) if (i + j) % 2 else
                           ("poly", (cx - r, cy, cx, cy - r, cx + r, cy, cx, cy + r), roles[(i + j) % 2]))
        return ops
    if kind == 1:  # concentric rings
        cx, cy = rng.uniform(0.3, 0.7, 2)
        return [("circle", (cx, cy, r), roles[i % 4]) for i, r in enumerate(np.linspace(0.75, 0.1, 6))]
    return [("poly", tuple(rng.uniform(-0.1, 1.1, 6)), roles[i % 4]) for i in range(int(rng.integers(5, 8)))]


def _scene_portrait(rng):
    cx, cy, r = rng.uniform(0.42, 0.58), rng.uniform(0.4, 0.5), rng.uniform(0.22, 0.28)
    ops = [("ellipse", (cx, cy + 0.15 * r, 1.3 * r, 1.45 * r), "secondary"),
           ("ellipse", (cx, 1.08, 0.42, 0.25), "primary"),
           ("box", (cx, cy + 1.05 * r, 0.3 * r, 0.3 * r), "light"),
           ("circle", (cx, cy, r), "light"),
           ("ellipse", (cx, cy - 0.62 * r, 1.02 * r, 0.5 * r), "secondary")]
    ops += [("ellipse", (cx + sx * 0.4 * r, cy + 0.12 * r, 0.13 * r, 0.2 * r), "dark") for sx in (-1, 1)]
    return ops + [("box", (cx, cy + 0.55 * r, 0.12 * r, 0.03 * r), "accent")]


SCENES = {"solo character": _scene_solo, "group scene": _scene_group, "landscape": _scene_landscape,
           "action": _scene_action, "mecha": _scene_mecha, "still life": _scene_still_life,
           "abstract": _scene_abstract, "portrait": _scene_portrait}


# ----------------------------------------------------------------------------------------------------------------
# Drawing.


def _hex(c: str) -> np.ndarray:
    return np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255.0


def _texture_mask(texture: str, n: int, size: int) -> np.ndarray:
    """Where the artist's texture darkens a fill; periods are in output pixels so every resolution shows them."""
    t = (np.arange(n) + 0.5) / n * size
    u, v = t[None, :], t[:, None]  # (1, n), (n, 1) in output pixels
    if texture == "flat":
        return np.zeros((n, n), dtype=bool)
    if texture == "hatch":
        return (u + v) % 4 < 1.0
    if texture == "crosshatch":
        return ((u + v) % 4 < 1.0) | ((u - v) % 4 < 1.0)
    if texture == "dots":
        return (u % 4 - 2) ** 2 + (v % 4 - 2) ** 2 < 1.0
    if texture == "stripes":
        return np.broadcast_to(v % 4 < 2.0, (n, n))
    raise ValueError(f"unknown texture {texture!r}")


def _shade(shading: str, x, y, cx: float, cy: float, ext: float):
    """Brightness factor over a shape lit from the top left."""
    if shading == "flat":
        return 1.0
    t = ((x - cx) * 0.6 + (y - cy) * 0.8) / max(ext, 1e-6)  # (n, n) about -1 (lit) .. 1 (shadow)
    if shading == "cel":
        return np.where(t > 0.2, 0.7, 1.0)
    return 1.12 - 0.42 * np.clip((t + 1.0) / 2.0, 0.0, 1.0)


def draw(ops: list[tuple], style: ArtistStyle, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    coords = (np.arange(n) + 0.5) / n
    x, y = coords[None, :], coords[:, None]  # (1, n), (n, 1)
    # A small per-image palette jitter keeps the artist a style rather than six exact RGB values.
    pal = np.clip(np.stack([_hex(c) for c in style.palette]) + rng.normal(0.0, 0.02, (6, 3)), 0, 1)  # (6, 3)
    img = np.broadcast_to(pal[0], (n, n, 3)).copy()  # (n, n, 3)
    if style.shading == "gradient":
        img = np.clip(img * (1.08 - 0.2 * y)[..., None], 0, 1)
    pattern = _texture_mask(style.texture, n, size)[..., None]  # (n, n, 1)
    outline = _hex(style.outline)
    for kind, params, role in ops:
        _, (cx, cy, ext) = _SHAPES[kind](0.0, 0.0, *params)  # geometry only, to bound the work below
        # Every shape lies within ext of its centre; evaluate it on that window only (plus a pixel of margin).
        r0, r1 = max(int((cy - ext) * n) - 1, 0), min(int(math.ceil((cy + ext) * n)) + 1, n)
        c0, c1 = max(int((cx - ext) * n) - 1, 0), min(int(math.ceil((cx + ext) * n)) + 1, n)
        if r0 >= r1 or c0 >= c1:
            continue
        xs, ys = x[:, c0:c1], y[r0:r1]  # (1, w), (h, 1)
        d, _ = _SHAPES[kind](xs, ys, *params)  # (h, w)
        inside = (d < 0)[..., None]
        col = pal[_ROLE[role]] * np.asarray(_shade(style.shading, xs, ys, cx, cy, ext))[..., None]
        col = np.where(pattern[r0:r1, c0:c1], 0.6 * col + 0.4 * pal[5], col)
        if style.outline_px > 0:
            col = np.where((d > -style.outline_px / size)[..., None], outline, col)
        img[r0:r1, c0:c1] = np.where(inside, col, img[r0:r1, c0:c1])
    return np.clip(img, 0.0, 1.0)
