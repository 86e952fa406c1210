"""How sure are we? Statistics behind every number the suite reports.

The proposal quotes single numbers (KMeans NMI 0.926, mean pairwise cosine 0.814). A single KMeans seed or a
single sample of prompts can move those a lot, so here every score comes with its spread over seeds, a
bootstrap interval over items, or a permutation null that says what "chance" looks like.

Inputs may be numpy arrays or torch tensors (moved to CPU float64 here); nothing in this module uses a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap, norm, spearmanr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, mutual_info_score
from threadpoolctl import threadpool_limits

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
NULL_QUANTILES = (0.05, 0.5, 0.95)


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


def _nmi_rows(a_codes: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`nmi(a, b)` for every row of a_codes (P, N) against one labeling b (N,), in one bincount: (P,).

    The rows are permutations of one labeling, so both marginals (and the entropies) are the same for every row;
    only the joint table differs. Equal to `nmi` within 1e-12 (a test checks it), 100x faster per row.
    """
    a_codes = np.unique(a_codes, return_inverse=True)[1].reshape(a_codes.shape)  # (P, N) codes 0..Ka-1
    b = np.unique(b, return_inverse=True)[1].ravel()  # (N,)
    (n_rows, n), ka, kb = a_codes.shape, int(a_codes.max()) + 1, int(b.max()) + 1
    if ka == kb == 1:
        return np.ones(n_rows)
    cells = (np.arange(n_rows)[:, None] * ka + a_codes) * kb + b  # (P, N) flat index of (row, a, b)
    table = np.bincount(cells.ravel(), minlength=n_rows * ka * kb).reshape(n_rows, ka, kb).astype(np.float64)
    outer = table.sum(2, keepdims=True) * table.sum(1, keepdims=True)  # (P, Ka, Kb)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(table > 0, table / n * np.log(table * n / outer), 0.0)
    mi = np.clip(terms.sum(axis=(1, 2)), 0.0, None)  # (P,)
    norm = (_entropy(table[0].sum(1)) + _entropy(table[0].sum(0))) / 2
    return np.where(mi > 0, mi / max(norm, np.finfo(np.float64).eps), 0.0)


def permutation_null(
    X, labels: Sequence, n_perm: int = 200, seed: int = 0, k: int | None = None, n_init: int = 10,
    partitions: Sequence[np.ndarray] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
) -> np.ndarray:
    """Seed-mean NMI with shuffled labels, (n_perm,): the null of `kmeans_nmi(...).nmi_mean`, built like it.

    KMeans never sees the labels (only their count, which shuffling keeps), so the partitions are fitted once, one
    per KMeans seed as the statistic fits them, and each draw scores one shuffle against every partition and
    averages, as the statistic averages over seeds. Pass `partitions` (e.g. `ClusterScore.partitions`) to reuse
    the statistic's own fits; otherwise they are fitted with `seeds`. `seed` draws the shuffles.
    """
    X = _matrix(X)
    lab = _labels(labels, len(X))
    k = len(np.unique(lab)) if k is None else int(k)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    parts = [_kmeans(X, k, int(s), n_init) for s in seeds] if partitions is None else list(partitions)
    if not parts or any(np.shape(p) != lab.shape for p in parts):
        raise ValueError(f"partitions must be non-empty, each of shape {lab.shape}; got {[np.shape(p) for p in parts]}")
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(lab) for _ in range(n_perm)])  # (n_perm, N)
    return np.mean([_nmi_rows(shuffled, np.asarray(p)) for p in parts], axis=0)  # (n_perm,)


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


def null_summary(observed: float, null, two_sided: bool = False, exact: bool = False) -> dict[str, float]:
    """Where `observed` sits in a null built like it: {"null_q05", "null_q50", "null_q95", "null_sd", "p", "mde"}.

    p is one-sided (upper tail) unless `two_sided` (2 x the smaller tail, at most 1). A Monte-Carlo null gets the
    +1 of `empirical_p`; an `exact` null (every permutation, the identity among them, as `swap_null`) does not.
    mde = 2.49 x the null's sd: the smallest excess over the null a run of this size could have detected.
    """
    arr = as_numpy(null, "null values").ravel()
    out = {f"null_q{round(q * 100):02d}": v for q, v in null_quantiles(arr, NULL_QUANTILES).items()}
    if exact:
        upper, lower = float(np.mean(arr >= observed)), float(np.mean(arr <= observed))
    else:
        upper, lower = empirical_p(observed, arr), empirical_p(observed, arr, higher_is_extreme=False)
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {**out, "null_sd": sd, "p": min(1.0, 2 * min(upper, lower)) if two_sided else upper, "mde": mde(sd)}


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long 1-D sequences."""
    a, b = as_numpy(a, "a").ravel(), as_numpy(b, "b").ravel()
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, got {len(a)} and {len(b)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("spearman is undefined for a constant sequence")
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- several tests, power, intervals


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values in the input order: sort ascending, adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)). Controls the family-wise error with no independence assumption. Written here
    (six lines) rather than adding statsmodels for one function; a test checks it against a hand example."""
    p = as_numpy(p_values, "p-values").ravel()
    order = np.argsort(p, kind="stable")
    steps = (len(p) - np.arange(len(p))) * p[order]  # (m - j + 1) p_(j), j = 1..m
    out = np.empty_like(p)
    out[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return out


def mde(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a one-sided level-`alpha` test with `power`: (z_{1-alpha} + z_power) se,
    2.49 se at the defaults. `se` is the statistic's standard error under the null (a permutation null's sd)."""
    return float((norm.ppf(1 - alpha) + norm.ppf(power)) * se)


def half_sample_se(stat_fn: Callable[[np.ndarray], float], n: int, n_sub: int = 40, seed: int = 0) -> float:
    """Standard error of a statistic of n items by the delete-d jackknife with d = n/2 (Shao & Wu 1989): the
    statistic is recomputed on `n_sub` random halves drawn without replacement, and sqrt(r / d) times their sd
    (r = kept = n // 2, d = n - r; the factor is 1 for even n) estimates its SE at size n.

    Why halves and not the bootstrap: a with-replacement resample repeats items, and statistics of a partition
    (KMeans NMI) rise from the repeats alone (chance-level captions scored 0.077, their resamples 0.12-0.17), so
    bootstrap intervals (BCa included: no resample fell below the estimate) say more about the repeats than
    about the data. Halves repeat nothing, and `stat_fn(idx)` may refit whatever the statistic fits.
    """
    if n < 4 or n_sub < 2:
        raise ValueError(f"half-sampling needs n >= 4 items and n_sub >= 2, got n={n}, n_sub={n_sub}")
    rng = np.random.default_rng(seed)
    kept = n // 2
    values = np.array([float(stat_fn(np.sort(rng.choice(n, kept, replace=False)))) for _ in range(n_sub)])
    if not np.all(np.isfinite(values)):
        raise ValueError("stat_fn returned a non-finite value on a half-sample")
    return float(np.sqrt(kept / (n - kept) * values.var()))


def normal_ci(estimate: float, se: float, level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)
              ) -> tuple[float, float]:
    """estimate -/+ z se, clipped to the statistic's range `bounds` (e.g. (0, 1) for an NMI)."""
    z = norm.ppf(0.5 + level / 2)
    return float(max(bounds[0], estimate - z * se)), float(min(bounds[1], estimate + z * se))


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap CI and standard error."""

    value: float
    low: float
    high: float
    se: float


def cluster_bca(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], n_boot: int = 2000,
                level: float = 0.95, seed: int = 0) -> Interval:
    """BCa interval (`scipy.stats.bootstrap`) for a statistic of clusters: each array in `samples` has one entry
    per cluster along axis 0 (e.g. a prompt's mean over its noise draws and sigmas), resampled together (paired),
    so rows that share a cluster are never split. `statistic(*samples, axis=-1)` must be vectorised. With fewer
    than ~10 clusters the interval is approximate: the reports say so."""
    samples = tuple(as_numpy(s, "samples") for s in samples)
    value = float(statistic(*samples, axis=-1))
    if len(samples[0]) < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 clusters, got {len(samples[0])}")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)  # no spread to resample: handled below
        res = bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=n_boot,
                        confidence_level=level, method="BCa", random_state=np.random.default_rng(seed))
    if np.ptp(res.bootstrap_distribution) == 0:  # every resample alike (e.g. no response at all): no spread
        return Interval(value, value, value, 0.0)
    return Interval(value, float(res.confidence_interval.low), float(res.confidence_interval.high),
                    float(res.standard_error))


def swap_null(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float]) -> np.ndarray:
    """Exact paired randomisation null: `statistic(a', b')` for every way of swapping a[k] <-> b[k] within the K
    clusters (2^K values, the identity included). Under "the label a/b does not matter within a cluster" every
    swap is as likely as the observed one, so p = share of the null >= the observed, with no +1 (the identity is
    already in the null). K <= 16 (65,536 swaps)."""
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    if a.shape != b.shape or not 1 <= len(a) <= 16:
        raise ValueError(f"swap_null needs paired arrays of 1..16 clusters, got shapes {a.shape} and {b.shape}")
    out = []
    for pattern in range(2 ** len(a)):
        swap = ((pattern >> np.arange(len(a))) & 1).astype(bool).reshape((-1,) + (1,) * (a.ndim - 1))  # (K, 1..)
        out.append(float(statistic(np.where(swap, b, a), np.where(swap, a, b))))
    return np.array(out)  # (2^K,)
