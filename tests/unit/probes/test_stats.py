"""Statistics on data with known answers: planted clusters, shuffled labels, fixed directions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anima_probe.probes.stats import (
    ClusterScore,
    bootstrap_ci,
    cluster_bca,
    cosine_matrix,
    empirical_p,
    half_sample_se,
    holm,
    kmeans_nmi,
    mde,
    nmi,
    normal_ci,
    null_quantiles,
    null_summary,
    pairwise_cosines,
    permutation_null,
    spearman,
    swap_null,
)


def _planted(n_per: int = 20, k: int = 4, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k tight blobs far apart: any sensible KMeans recovers them exactly."""
    rng = np.random.default_rng(seed)
    centers = np.eye(k, d) * 50.0  # (k, d)
    X = np.concatenate([c + rng.normal(0, 0.5, size=(n_per, d)) for c in centers])  # (k*n_per, d)
    labels = np.repeat([f"artist_{i}" for i in range(k)], n_per)
    return X, labels


def test_planted_clusters_give_nmi_and_ari_one():
    X, labels = _planted()
    score = kmeans_nmi(X, labels, seeds=(0, 1, 2))
    assert score.k == 4
    assert score.nmi_mean == pytest.approx(1.0)
    assert score.ari_mean == pytest.approx(1.0)
    assert score.nmi_sd == pytest.approx(0.0, abs=1e-12)
    assert len(score.nmi_per_seed) == len(score.ari_per_seed) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.nmi_mean = 0.0  # type: ignore[misc]


def test_torch_input_is_accepted():
    X, labels = _planted()
    score = kmeans_nmi(torch.from_numpy(X).to(torch.bfloat16), labels, seeds=(0,))
    assert isinstance(score, ClusterScore)
    assert score.nmi_mean == pytest.approx(1.0)
    assert score.nmi_sd == 0.0


def test_shuffled_labels_give_nmi_near_zero():
    X, labels = _planted(n_per=50)
    shuffled = np.random.default_rng(3).permutation(labels)
    score = kmeans_nmi(X, shuffled, seeds=(0, 1))
    assert score.nmi_mean < 0.1
    assert abs(score.ari_mean) < 0.05


def test_permutation_null_sits_near_zero_and_observed_is_extreme():
    X, labels = _planted(n_per=25)
    null = permutation_null(X, labels, n_perm=100, seed=0)
    assert null.shape == (100,)
    assert null.max() < 0.2
    q = null_quantiles(null)
    assert set(q) == {0.5, 0.95, 0.99}
    assert q[0.5] <= q[0.95] <= q[0.99]
    observed = kmeans_nmi(X, labels, seeds=(0,)).nmi_mean
    assert empirical_p(observed, null) == pytest.approx(1 / 101)


def test_empirical_p_plus_one_correction():
    null = np.arange(9.0)  # 0..8
    assert empirical_p(100.0, null) == pytest.approx(1 / 10)  # never exactly 0
    assert empirical_p(4.0, null) == pytest.approx((1 + 5) / 10)  # 4,5,6,7,8 are >= 4
    assert empirical_p(-1.0, null) == pytest.approx(1.0)
    assert empirical_p(0.0, null, higher_is_extreme=False) == pytest.approx(2 / 10)


def test_cosines_identical_opposite_orthogonal():
    v = np.array([1.0, 2.0, -3.0])
    V = np.stack([v, 2.5 * v, -v, np.array([2.0, -1.0, 0.0])])  # (4, 3); last is orthogonal to v
    C = cosine_matrix(V)
    assert C[0, 1] == pytest.approx(1.0)
    assert C[0, 2] == pytest.approx(-1.0)
    assert C[0, 3] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.diag(C), 1.0)
    pairs = pairwise_cosines(V)
    assert pairs.shape == (6,)
    assert pairs.tolist() == pytest.approx([1.0, -1.0, 0.0, -1.0, 0.0, 0.0], abs=1e-12)


def test_pairwise_cosines_count_for_eight_content_types():
    assert pairwise_cosines(np.random.default_rng(0).normal(size=(8, 16))).shape == (28,)


def test_zero_vector_is_named():
    with pytest.raises(ValueError, match="V row 1 has zero norm"):
        cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_bootstrap_ci_contains_true_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    true_mean = 3.0
    widths = []
    for n in (30, 1000):
        sample = rng.normal(true_mean, 1.0, size=n)
        low, high = bootstrap_ci(lambda idx, s=sample: s[idx].mean(), n, n_boot=300, seed=1)
        assert low < true_mean < high
        widths.append(high - low)
    # Width scales like 1/sqrt(n): sqrt(1000/30) ~ 5.8, so demand at least 3x narrower.
    assert widths[1] < widths[0] / 3


def test_bootstrap_is_reproducible_and_rejects_nan():
    sample = np.arange(10.0)
    a = bootstrap_ci(lambda idx: sample[idx].mean(), 10, seed=5)
    b = bootstrap_ci(lambda idx: sample[idx].mean(), 10, seed=5)
    assert a == b
    with pytest.raises(ValueError, match="non-finite value"):
        bootstrap_ci(lambda idx: float("nan"), 10)


def test_spearman_known_answers():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(a, [10.0, 20.0, 30.0, 40.0, 1000.0]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(a, [5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        spearman(a, [1.0] * 5)
    with pytest.raises(ValueError, match="equal length"):
        spearman(a, [1.0, 2.0])


def test_input_errors():
    X, labels = _planted()
    with pytest.raises(ValueError, match="one entry per row"):
        kmeans_nmi(X, labels[:-1])
    with pytest.raises(ValueError, match="k must be between"):
        kmeans_nmi(X, labels, k=1)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        kmeans_nmi(X, labels)


def test_fast_nmi_equals_sklearn_including_limit_cases():
    from sklearn.metrics import normalized_mutual_info_score

    from anima_probe.probes.stats import nmi

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 12, 360), rng.integers(0, 12, 360)) for _ in range(20)]
    a = rng.integers(0, 5, 60)
    cases += [(a, a), (a, (a + 1) % 5), (a, np.zeros(60, int)), (np.zeros(9, int), np.full(9, 3)), (a * 2, a),
              (np.array(list("aabbc")), np.array([3, 3, 1, 1, 0]))]
    for x, y in cases:
        assert nmi(x, y) == pytest.approx(normalized_mutual_info_score(x, y), abs=1e-12)


def test_permutation_null_averages_one_shuffle_over_the_statistics_partitions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 6, 20, axis=0)
    labels = np.repeat([0, 1, 2], 20)
    score = kmeans_nmi(X, labels, seeds=(3, 4))
    assert len(score.partitions) == 2 and score.partitions[0].shape == (60,)
    null = permutation_null(X, labels, n_perm=30, seed=3, partitions=score.partitions)
    # by hand: the same 30 shuffles, each scored against both partitions and averaged, as nmi_mean averages seeds
    shuffle = np.random.default_rng(3)
    by_hand = [np.mean([nmi(perm, p) for p in score.partitions]) for perm in (shuffle.permutation(labels)
                                                                          for _ in range(30))]
    assert null == pytest.approx(by_hand, abs=1e-12)
    assert np.array_equal(permutation_null(X, labels, n_perm=30, seed=3, seeds=(3, 4)), null)  # fits the same seeds
    with pytest.raises(ValueError, match="partitions must be non-empty"):
        permutation_null(X, labels, partitions=[score.partitions[0][:10]])


def test_holm_matches_the_textbook_definition_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4, 0.3]) == pytest.approx([0.9, 0.9, 0.9])  # 3 x 0.3, then max(0.9, 2 x 0.4), max(.., 0.5)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 2 x 0.6 = 1.2, capped at 1
    assert holm([0.2]) == pytest.approx([0.2])  # one test: unchanged
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])  # ties


def test_mde_is_z_alpha_plus_z_power_times_the_se():
    assert mde(1.0) == pytest.approx(1.6448536 + 0.8416212, abs=1e-6)  # 2.49 at one-sided 0.05 and power 0.8
    assert mde(0.1, alpha=0.025, power=0.9) == pytest.approx(0.1 * (1.9599640 + 1.2815516), abs=1e-6)
    assert mde(0.0) == 0.0


def test_bca_over_clusters_covers_a_known_mean_at_about_its_level():
    rng = np.random.default_rng(0)
    covered = [(ci.low <= 3.0 <= ci.high)
               for ci in (cluster_bca((rng.normal(3.0, 1.0, 25),), lambda x, axis=-1: x.mean(axis), n_boot=999, seed=i)
                          for i in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.99  # nominal 0.95; 200 datasets give +-0.03
    constant = cluster_bca((np.full(8, 2.0),), lambda x, axis=-1: x.mean(axis))
    assert (constant.value, constant.low, constant.high, constant.se) == (2.0, 2.0, 2.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        cluster_bca((np.ones(1),), lambda x, axis=-1: x.mean(axis))


def test_half_sample_se_of_a_mean_is_the_textbook_se():
    x = np.random.default_rng(1).normal(0.0, 2.0, 80)
    se = half_sample_se(lambda idx: x[idx].mean(), len(x), n_sub=2000, seed=0)
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.06)
    odd = np.random.default_rng(2).normal(0.0, 1.0, 81)  # kept 40, deleted 41: factor sqrt(40 / 41)
    assert half_sample_se(lambda idx: odd[idx].mean(), 81, n_sub=2000) == pytest.approx(
        odd.std(ddof=1) / 9, rel=0.06)
    assert normal_ci(0.5, 0.1, 0.95, bounds=(0.0, 0.6)) == pytest.approx((0.5 - 0.195996, 0.6), abs=1e-6)
    with pytest.raises(ValueError, match="half-sampling needs"):
        half_sample_se(lambda idx: 0.0, 3)


def test_swap_null_is_exact_finds_a_planted_difference_and_not_a_copy():
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 8)

    def ratio(x, y):
        return x.mean() / y.mean()

    planted = swap_null(2 * b, b, ratio)
    assert planted.shape == (256,) and planted[0] == pytest.approx(2.0)  # pattern 0 is the identity
    assert null_summary(2.0, planted, exact=True)["p"] == pytest.approx(1 / 256)  # only the identity reaches 2
    copy = b * rng.uniform(0.9, 1.1, 8)  # the same point measured twice: no difference to find
    assert null_summary(ratio(copy, b), swap_null(copy, b, ratio), exact=True)["p"] > 0.05
    with pytest.raises(ValueError, match="paired arrays"):
        swap_null(np.ones(3), np.ones(4), ratio)


def test_null_summary_p_mde_and_two_sided():
    null = np.arange(99.0)
    s = null_summary(200.0, null)
    assert s["p"] == pytest.approx(1 / 100) and s["null_q50"] == pytest.approx(49.0)
    assert s["mde"] == pytest.approx(mde(null.std(ddof=1)))
    assert null_summary(-1.0, null, two_sided=True)["p"] == pytest.approx(2 / 100)
    assert null_summary(49.0, null, two_sided=True)["p"] == 1.0
    assert null_summary(98.0, null, exact=True)["p"] == pytest.approx(1 / 99)  # no +1: the identity is in the null
