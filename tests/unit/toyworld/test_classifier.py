"""Factor classifiers trained on toy data recognise artist and content far above chance, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anima_probe.toyworld.classifier import chance_level, factor_features, fit_factor_classifier
from anima_probe.toyworld.world import generate


# The accuracy tests (the positive control and its shuffled-label negative control, built alike) need the full
# 900-image fit, ~45 s of CPU: they are marked slow. Determinism and the error messages hold on a few images.
@pytest.fixture(scope="module")
def data():
    train, test = generate(900, seed=10), generate(360, seed=11)
    return (np.stack([t.image for t in train]), train, np.stack([t.image for t in test]), test)


@pytest.fixture(scope="module")
def fitted(data):
    x_tr, train, _, _ = data
    return {f: fit_factor_classifier(x_tr, [getattr(t, f) for t in train], seed=0) for f in ("artist", "content")}


@pytest.mark.slow
@pytest.mark.parametrize("factor", ["artist", "content"])
def test_held_out_accuracy_far_above_chance(data, fitted, factor):
    _, _, x_te, test = data
    labels = [getattr(t, factor) for t in test]
    acc, chance = fitted[factor].accuracy(x_te, labels), chance_level(labels)
    assert chance < 0.2
    assert acc >= max(3 * chance, 0.85), (factor, acc, chance)  # measured 0.981 (artist) / 0.978 (content) at commit time


@pytest.mark.slow
def test_low_quality_images_are_still_recognised(data, fitted):
    _, _, x_te, test = data
    low = [i for i, t in enumerate(test) if t.quality <= 3]
    for factor in ("artist", "content"):
        acc = fitted[factor].accuracy(x_te[low], [getattr(test[i], factor) for i in low])
        assert acc >= 0.75, (factor, acc)


@pytest.mark.slow
def test_shuffled_labels_fall_to_chance(data):
    """The accuracy test can fail: with labels unrelated to the pixels, held-out accuracy is near chance."""
    x_tr, train, x_te, test = data
    shuffled = list(np.random.default_rng(0).permutation([t.artist for t in train]))
    clf = fit_factor_classifier(x_tr, shuffled, seed=0)
    labels = [t.artist for t in test]
    assert clf.accuracy(x_te, labels) < 2 * chance_level(labels) + 0.05


def test_fit_is_deterministic():
    small = generate(80, seed=12)
    x, labels = np.stack([t.image for t in small]), [t.content for t in small]
    first, again = fit_factor_classifier(x, labels, seed=0), fit_factor_classifier(x, labels, seed=0)
    a, b = again.model[-1], first.model[-1]
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
    assert again.predict(x) == first.predict(x)


@pytest.mark.slow
def test_other_sizes_are_resized_to_the_training_size(data, fitted):
    _, _, x_te, test = data
    big = x_te.repeat(2, axis=1).repeat(2, axis=2)  # (N, 64, 64, 3) nearest-neighbour 2x
    assert fitted["artist"].predict(big) == fitted["artist"].predict(x_te)  # box-down of a 2x repeat is exact
    odd = np.clip(ndimage.zoom(x_te[:40], (1, 1.5, 1.5, 1), order=1), 0, 1)  # (40, 48, 48, 3): not a multiple
    labels = [t.content for t in test[:40]]
    assert fitted["content"].accuracy(odd, labels) >= 0.7


def test_chance_level_known_answers():
    assert chance_level(["a", "a", "b"]) == pytest.approx(2 / 3)
    assert chance_level(["x"] * 5) == 1.0
    assert chance_level([str(i % 8) for i in range(80)]) == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="at least one label"):
        chance_level([])


def test_errors_name_the_problem():
    x_tr = np.stack([t.image for t in generate(5, seed=10)])
    with pytest.raises(ValueError, match="3 labels for 5 images"):
        fit_factor_classifier(x_tr[:5], ["a", "b", "c"], seed=0)
    with pytest.raises(ValueError, match="two distinct labels"):
        fit_factor_classifier(x_tr[:5], ["a"] * 5, seed=0)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        factor_features(x_tr[0])
    with pytest.raises(ValueError, match="square"):
        factor_features(np.zeros((2, 32, 40, 3)))
