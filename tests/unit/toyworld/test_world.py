"""The toy world draws what its factors say, deterministically, with the documented planted structure."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from scipy import stats

from anima_probe.toyworld.world import (
    ARTISTS,
    CONTENT_TAGS,
    CONTENT_TYPES,
    QUALITY_LEVELS,
    RESOLUTION_TAGS,
    caption_for,
    captions,
    degradation_strength,
    generate,
    read_manifest,
    render,
    sample_factors,
    write_manifest,
)


def test_factor_levels_are_the_proposals():
    assert CONTENT_TYPES == ("solo character", "group scene", "landscape", "action", "mecha", "still life",
                             "abstract", "portrait")
    assert CONTENT_TAGS["landscape"] == ("scenery", "landscape", "no humans")
    assert CONTENT_TAGS["portrait"] == ("1girl", "portrait", "close-up")
    assert len(ARTISTS) >= 12 and len(set(ARTISTS)) == len(ARTISTS)
    assert all(a.startswith("@") and " " not in a and "," not in a for a in ARTISTS)
    assert QUALITY_LEVELS == tuple(range(1, 10))
    assert set(RESOLUTION_TAGS) == {"absurdres", "highres", "none", "lowres"}


def test_render_every_artist_and_content_shape_and_range():
    rng = np.random.default_rng(0)
    for artist in ARTISTS:
        for content in CONTENT_TYPES:
            img = render(artist, content, 9, "none", rng)
            assert img.shape == (32, 32, 3) and img.dtype == np.float32
            assert img.min() >= 0.0 and img.max() <= 1.0
            assert img.std() > 0.03, (artist, content)  # something is drawn on the background
    assert render(ARTISTS[0], "mecha", 1, "lowres", rng, size=48).shape == (48, 48, 3)


def test_render_rejects_bad_factors_by_name():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown artist '@nobody'"):
        render("@nobody", "mecha", 5, "none", rng)
    with pytest.raises(ValueError, match="unknown content 'car'"):
        render(ARTISTS[0], "car", 5, "none", rng)
    with pytest.raises(ValueError, match="quality must be an integer in 1..9, got 10"):
        render(ARTISTS[0], "mecha", 10, "none", rng)
    with pytest.raises(ValueError, match="unknown resolution '4k'"):
        render(ARTISTS[0], "mecha", 5, "4k", rng)
    with pytest.raises(ValueError, match="multiple of 8"):
        render(ARTISTS[0], "mecha", 5, "none", rng, size=30)


def test_generate_is_deterministic_and_prefix_stable():
    a, b, c = generate(24, seed=5), generate(24, seed=5), generate(24, seed=6)
    assert [t.caption for t in a] == [t.caption for t in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert [t.caption for t in a] != [t.caption for t in c]
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    short = generate(10, seed=5)  # item i depends only on (seed, i)
    assert all(np.array_equal(x.image, y.image) and x.caption == y.caption for x, y in zip(short, a[:10], strict=True))
    assert len({t.id for t in a}) == 24


@pytest.mark.parametrize("quality, words", [(9, {"masterpiece", "best quality"}), (8, {"masterpiece", "best quality"}),
                                            (7, set()), (3, set()), (2, {"worst quality", "low quality"}),
                                            (1, {"worst quality", "low quality"})])
def test_caption_quality_rule(quality, words):
    tags = caption_for("@pop_kyu", "mecha", quality, "none", np.random.default_rng(quality)).split(", ")
    assert f"score_{quality}" in tags
    assert set(tags) - {f"score_{quality}", "@pop_kyu", "mecha", "robot", "no humans"} == words


def test_caption_tags_match_factors():
    for t in generate(200, seed=3):
        tags = t.caption.split(", ")
        assert len(tags) == len(set(tags))
        assert [x for x in tags if x.startswith("@")] == [t.artist]
        assert [x for x in tags if x.startswith("score_")] == [f"score_{t.quality}"]
        res_tags = [x for x in tags if x in ("absurdres", "highres", "lowres")]
        assert res_tags == ([] if t.resolution == "none" else [t.resolution])
        content = [x for x in tags if x in CONTENT_TAGS[t.content]]
        assert content == list(CONTENT_TAGS[t.content])  # present, in their fixed order


def test_degradation_grows_as_quality_falls():
    strengths = [degradation_strength(q) for q in QUALITY_LEVELS]
    for key in ("blur_sigma_px", "block_step", "noise_sd"):
        values = [s[key] for s in strengths]
        assert values == sorted(values, reverse=True) and values[-1] == 0.0 and values[0] > 0
    assert [s["levels"] for s in strengths] == sorted(s["levels"] for s in strengths)
    # Same seed -> same scene and palette; only the degradation differs, so the error vs q=9 must grow.
    err = np.zeros(len(QUALITY_LEVELS))
    for i in range(12):
        clean = render(ARTISTS[i], CONTENT_TYPES[i % 8], 9, "none", np.random.default_rng(i))
        for q in QUALITY_LEVELS:
            err[q - 1] += np.abs(render(ARTISTS[i], CONTENT_TYPES[i % 8], q, "none", np.random.default_rng(i)) - clean).mean()
    assert err[-1] == 0.0 and np.all(np.diff(err) < 0), err


def test_lowres_is_softer_than_drawn_large():
    def edge_energy(res):
        return np.mean([np.abs(np.diff(render(ARTISTS[i], "mecha", 9, res, np.random.default_rng(i)).mean(-1), axis=1)).mean()
                        for i in range(12)])
    assert edge_energy("lowres") < 0.8 * edge_energy("absurdres")
    assert edge_energy("lowres") < 0.8 * edge_energy("none")


def test_planted_quality_resolution_correlation():
    factors = sample_factors(20000, seed=0)
    q = np.array([f["quality"] for f in factors])
    content = np.array([f["content"] for f in factors])
    res = np.array([("lowres", "none", "highres", "absurdres").index(f["resolution"]) for f in factors])
    rho = {c: stats.spearmanr(q[content == c], res[content == c])[0] for c in CONTENT_TYPES}
    assert abs(rho["abstract"]) < 0.06  # the null control
    assert all(rho[c] > 0.2 for c in CONTENT_TYPES if c != "abstract")
    assert rho["landscape"] > rho["solo character"] > rho["action"] > rho["still life"]  # the slope order
    shares = np.bincount(res, minlength=4) / len(res)
    np.testing.assert_allclose(shares, [0.15, 0.35, 0.30, 0.20], atol=0.02)
    # Artist and content are independent of everything: roughly uniform.
    assert np.unique(content, return_counts=True)[1].min() > 0.8 * len(q) / 8


def test_manifest_round_trip_and_atomic(tmp_path):
    images = generate(30, seed=1)
    path = tmp_path / "sub" / "manifest.csv"
    write_manifest(images, path)
    rows = read_manifest(path)
    assert os.listdir(path.parent) == ["manifest.csv"]  # no temp file left behind
    assert [r["caption"] for r in rows] == [t.caption for t in images]  # commas in captions survive quoting
    assert [(r["id"], r["artist"], r["content"], r["quality"], r["resolution"]) for r in rows] == \
        [(t.id, t.artist, t.content, t.quality, t.resolution) for t in images]


def test_read_manifest_names_the_bad_line(tmp_path):
    path = tmp_path / "m.csv"
    write_manifest(generate(3, seed=1), path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[2][-1] = "8k"  # the second data row, line 3 of the file
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ValueError, match=r"m.csv, line 3: unknown resolution '8k'"):
        read_manifest(path)
    path.write_text("id,caption\nx,y\n")
    with pytest.raises(ValueError, match="header"):
        read_manifest(path)


def test_captions_are_generates_captions_without_pixels():
    assert captions(30, 7) == [t.caption for t in generate(30, 7)]
    assert captions(10, 7) == captions(30, 7)[:10]  # item i depends only on (seed, i)
