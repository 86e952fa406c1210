"""Factor classifiers: did the tiny model learn its world, i.e. does a sample show the artist / content it was
prompted with?

A classifier is trained on toy images only (never on model samples) to name one factor from pixels. Applied to
the model's samples, its accuracy against the prompted factor is the evidence: near the held-out accuracy on toy
data means the model draws that factor recognisably; near `chance_level` means it does not.

Features are simple and fixed (no learned image model): an 8x8 colour thumbnail (layout + palette), a joint
4x4x4 colour histogram (palette), pooled gradient energy on a 4x4 grid (where the shapes are), a
magnitude-weighted gradient-orientation histogram and log power in radial x angular frequency bands (outline
weight and hatching / dots / stripes texture). A standardised multinomial logistic regression maps them to labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3); got shape {x.shape} (add a batch axis for one image)")
    if x.shape[1] != x.shape[2] or x.shape[1] < 16:
        raise ValueError(f"images must be square and at least 16x16, got {x.shape[1:3]}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    return np.clip(x, 0.0, 1.0)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bring (N, S, S, 3) to the classifier's training size, so samples of another size can be checked."""
    s = x.shape[1]
    if s == size:
        return x
    if s % size == 0:  # exact box filter when it can
        k = s // size
        return x.reshape(len(x), size, k, size, k, 3).mean(axis=(2, 4))
    return np.clip(ndimage.zoom(x, (1, size / s, size / s, 1), order=1, grid_mode=True, mode="nearest"), 0, 1)


def _pool(a: np.ndarray, cells: int) -> np.ndarray:
    """Mean over a cells x cells grid of the two spatial axes (1, 2) of (N, S, S, ...)."""
    n, s = a.shape[0], a.shape[1]
    k = s // cells
    a = a[:, : k * cells, : k * cells]
    return a.reshape(n, cells, k, cells, k, *a.shape[3:]).mean(axis=(2, 4))


def _spectrum_bands(lum: np.ndarray) -> np.ndarray:
    """Log power of the mean-removed luminance in 3 radial x 4 orientation bands: (N, 12)."""
    n, s = lum.shape[:2]
    power = np.abs(np.fft.fft2(lum - lum.mean(axis=(1, 2), keepdims=True))) ** 2  # (N, S, S)
    f = np.fft.fftfreq(s)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    radius, angle = np.hypot(fx, fy), np.mod(np.arctan2(fy, fx), np.pi)
    r_bin = np.digitize(radius, [0.0625, 0.1875, 0.3125, 0.75]) - 1  # -1 = DC/lowest, 3 = beyond
    a_bin = np.floor((angle + np.pi / 8) / (np.pi / 4)).astype(int) % 4  # 0, 45, 90, 135 degrees
    out = [power[:, (r_bin == r) & (a_bin == a)].mean(axis=1) for r in range(3) for a in range(4)]
    return np.log(np.stack(out, axis=1) / (s * s) + 1e-6)


def factor_features(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Fixed features of (N, H, W, 3) images, after resizing to size x size: (N, D)."""
    x = _resize(_check_images(images), size)  # (N, S, S, 3)
    n = len(x)
    lum = x.mean(axis=-1)  # (N, S, S)
    gy, gx = np.gradient(lum, axis=(1, 2))  # (N, S, S) each
    mag = np.hypot(gx, gy)
    orient = (np.floor(np.mod(np.arctan2(gy, gx), np.pi) / (np.pi / 8)).astype(int) % 8).reshape(n, -1)
    orient_hist = np.stack([(mag.reshape(n, -1) * (orient == b)).mean(axis=1) for b in range(8)], axis=1)
    bins = np.minimum((x * 4).astype(int), 3)  # (N, S, S, 3) in 0..3
    code = (bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).reshape(n, -1) + 64 * np.arange(n)[:, None]
    hist = np.bincount(code.ravel(), minlength=64 * n).reshape(n, 64) / code.shape[1]  # (N, 64)
    return np.concatenate([
        _pool(x, 8).reshape(n, -1),  # (N, 192) colour thumbnail
        np.sqrt(hist),  # (N, 64) sqrt tempers the dominance of the background colour
        _pool(mag, 4).reshape(n, -1),  # (N, 16)
        orient_hist,  # (N, 8)
        _spectrum_bands(lum),  # (N, 12)
    ], axis=1)


def chance_level(labels: list[str]) -> float:
    """Accuracy of always answering the most common label."""
    if len(labels) == 0:
        raise ValueError("chance_level needs at least one label")
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum())


@dataclass(frozen=True)
class FactorClassifier:
    """A fitted classifier for one factor; `size` is the image size its features were computed at."""

    model: Pipeline
    classes: tuple[str, ...]
    size: int
    seed: int

    def predict(self, images: np.ndarray) -> list[str]:
        return [str(c) for c in self.model.predict(factor_features(images, self.size))]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities, columns in `classes` order."""
        return self.model.predict_proba(factor_features(images, self.size))

    def accuracy(self, images: np.ndarray, labels: list[str]) -> float:
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        return float(np.mean(np.asarray(self.predict(images)) == np.asarray(labels, dtype=str)))


def fit_factor_classifier(images: np.ndarray, labels: list[str], seed: int = 0,
                          c: float = 0.5) -> FactorClassifier:
    """Fit a standardised multinomial logistic regression on toy images; deterministic for a seed."""
    x = _check_images(images)
    y = np.asarray(labels, dtype=str)
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} images")
    if len(np.unique(y)) < 2:
        raise ValueError(f"need at least two distinct labels to classify, got {sorted(set(y))}")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    model.fit(factor_features(x, x.shape[1]), y)
    return FactorClassifier(model=model, classes=tuple(str(k) for k in model.classes_), size=x.shape[1], seed=seed)
