"""How sure are we? Statistics behind every number the suite reports.

The proposal quotes single numbers (KMeans NMI 0.926, mean pairwise cosine 0.814). A single KMeans seed or a
single sample of prompts can move those a lot, so here every score comes with its spread over seeds, a
bootstrap interval over items, or a permutation null that says what "chance" looks like.

Inputs may be numpy arrays or torch tensors (moved to CPU float64 here); nothing in this module uses a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, mutual_info_score
from threadpoolctl import threadpool_limits

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def as_numpy(a, name: str = "array") -> np.ndarray:
    """Torch tensor / list / array -> float64 numpy array (no autograd, on CPU)."""
    if hasattr(a, "detach"):  # torch.Tensor without importing torch here
        a = a.detach().to("cpu").float().numpy()
    out = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return out


def _labels(labels: Sequence, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ValueError(f"labels must be 1-D with one entry per row of X ({n}), got shape {lab.shape}")
    return lab


def _matrix(X, name: str = "X") -> np.ndarray:
    X = as_numpy(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {X.shape}")
    return X


@dataclass(frozen=True)
class ClusterScore:
    """KMeans-vs-labels agreement over several seeds (sd uses ddof=1; 0.0 for a single seed)."""

    nmi_mean: float
    nmi_sd: float
    ari_mean: float
    ari_sd: float
    nmi_per_seed: tuple[float, ...]
    ari_per_seed: tuple[float, ...]
    seeds: tuple[int, ...]
    k: int
    partitions: tuple[np.ndarray, ...] = ()  # (N,) cluster ids per seed, so callers reuse the fits


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), sd


def _kmeans(X: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    # One OpenMP thread: on a few hundred to a few thousand rows KMeans' threads only fight each other (on the
    # shared 2-core machine a 10-init fit took 0.7-2.8 s with 2 threads and 0.05 s with one).
    with threadpool_limits(limits=1, user_api="openmp"):
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(X)


def nmi(a, b) -> float:
    """sklearn's NMI (arithmetic normalisation, same limit cases) of two labelings, without its per-call overhead.

    sklearn re-validates and re-encodes its inputs on every call (3 ms at N = 360) and the bootstrap and the
    permutation null call it hundreds of times per pooling, so the contingency table is built here with one
    bincount (0.3 ms); sklearn still computes the mutual information from it.
    """
    a = np.unique(np.asarray(a), return_inverse=True)[1].ravel()  # (N,) codes 0..Ka-1
    b = np.unique(np.asarray(b), return_inverse=True)[1].ravel()
    kb = int(b.max()) + 1
    table = np.bincount(a * kb + b, minlength=(int(a.max()) + 1) * kb).reshape(-1, kb)  # (Ka, Kb)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0  # neither labeling splits the data: sklearn's "perfect match" limit
    mi = mutual_info_score(None, None, contingency=table)
    if mi == 0:
        return 0.0
    return float(mi / ((_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def kmeans_nmi(
    X, labels: Sequence, k: int | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, n_init: int = 10
) -> ClusterScore:
    """Cluster X (N, D) with KMeans once per seed and score each partition against `labels`.

    k defaults to the number of distinct labels (the proposal's 37 artists -> k = 37). n_init is fixed so the
    seed is the only source of variation between repeats.
    """
    X = _matrix(X)
    lab = _labels(labels, len(X))
    k = len(np.unique(lab)) if k is None else int(k)
    if not 2 <= k <= len(X):
        raise ValueError(f"k must be between 2 and N = {len(X)}, got {k}")
    if len(seeds) == 0:
        raise ValueError("seeds must not be empty")
    nmi_scores, ari, partitions = [], [], []
    for seed in seeds:
        pred = _kmeans(X, k, int(seed), n_init)
        partitions.append(pred)
        nmi_scores.append(nmi(lab, pred))
        ari.append(float(adjusted_rand_score(lab, pred)))
    nmi_mean, nmi_sd = _mean_sd(nmi_scores)
    ari_mean, ari_sd = _mean_sd(ari)
    return ClusterScore(nmi_mean, nmi_sd, ari_mean, ari_sd, tuple(nmi_scores), tuple(ari), tuple(seeds), k,
                        tuple(partitions))


def permutation_null(
    X, labels: Sequence, n_perm: int = 200, seed: int = 0, k: int | None = None, n_init: int = 10,
    partition: np.ndarray | None = None,
) -> np.ndarray:
    """NMI between a KMeans partition of X and shuffled labels, (n_perm,): what "chance" NMI looks like.

    KMeans never sees the labels (only their count, which shuffling keeps), so clustering once and
    shuffling the labels n_perm times is the exact null and costs one fit instead of n_perm. Pass the
    `partition` of an earlier fit (e.g. `ClusterScore.partitions[0]`) to skip even that one.
    """
    X = _matrix(X)
    lab = _labels(labels, len(X))
    k = len(np.unique(lab)) if k is None else int(k)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    pred = _kmeans(X, k, seed, n_init) if partition is None else np.asarray(partition)
    if pred.shape != lab.shape:
        raise ValueError(f"partition has shape {pred.shape}, labels {lab.shape}")
    rng = np.random.default_rng(seed)
    return np.array([nmi(rng.permutation(lab), pred) for _ in range(n_perm)])


def bootstrap_ci(
    stat_fn: Callable[[np.ndarray], float], n: int, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat_fn(idx)` where idx (n,) resamples item indices with replacement.

    stat_fn receives the index array and computes the statistic on those items, so any statistic (a mean
    cosine, an NMI on a subset of images) can be bootstrapped without this function knowing the data.
    """
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 items, got n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        value = float(stat_fn(rng.integers(0, n, size=n)))
        if not np.isfinite(value):
            raise ValueError(f"stat_fn returned a non-finite value ({value}) on bootstrap draw {b}")
        stats[b] = value
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def cosine_matrix(V) -> np.ndarray:
    """(n, D) -> (n, n) cosine similarities. A zero-norm row has no direction, so it is an error."""
    V = _matrix(V, "V")
    norms = np.linalg.norm(V, axis=1)  # (n,)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise ValueError(f"V row {int(zero[0])} has zero norm; a cosine is undefined for it")
    unit = V / norms[:, None]  # (n, D)
    return np.clip(unit @ unit.T, -1.0, 1.0)  # (n, n); clip rounding just past +-1


def pairwise_cosines(V) -> np.ndarray:
    """Cosines of all n*(n-1)/2 pairs i < j, row-major upper triangle (8 content types -> 28 values)."""
    C = cosine_matrix(V)  # (n, n)
    if len(C) < 2:
        raise ValueError(f"pairwise cosines need at least 2 vectors, got {len(C)}")
    i, j = np.triu_indices(len(C), k=1)
    return C[i, j]  # (n*(n-1)/2,)


def null_quantiles(values, qs: Sequence[float] = (0.5, 0.95, 0.99)) -> dict[float, float]:
    """Quantiles of a null distribution, e.g. {0.5: median, 0.95: ..., 0.99: ...}."""
    arr = as_numpy(values, "null values").ravel()
    if arr.size == 0:
        raise ValueError("null distribution is empty")
    return {float(q): float(np.quantile(arr, q)) for q in qs}


def empirical_p(observed: float, null, higher_is_extreme: bool = True) -> float:
    """One-sided permutation p-value with the +1 correction: (1 + #{null >= obs}) / (1 + n).

    The +1 counts the observed value as one draw from the null, so p is never 0 with finitely many draws.
    """
    arr = as_numpy(null, "null values").ravel()
    if arr.size == 0:
        raise ValueError("null distribution is empty")
    hits = np.sum(arr >= observed) if higher_is_extreme else np.sum(arr <= observed)
    return float((1 + hits) / (1 + arr.size))


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long 1-D sequences."""
    a, b = as_numpy(a, "a").ravel(), as_numpy(b, "b").ravel()
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, got {len(a)} and {len(b)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("spearman is undefined for a constant sequence")
    return float(spearmanr(a, b).statistic)
