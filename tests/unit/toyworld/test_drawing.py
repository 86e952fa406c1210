"""Drawing: every artist draws differently, every content type has a scene, a drawing covers only its shapes."""

from __future__ import annotations

import numpy as np

from anima_probe.toyworld.drawing import ARTISTS, SCENES, STYLES, draw
from anima_probe.toyworld.world import CONTENT_TYPES


def test_no_two_artists_draw_alike():
    styles = {(s.palette, s.texture, s.shading, s.outline_px) for s in STYLES.values()}
    assert len(styles) == len(ARTISTS) == len(STYLES)


def test_every_content_type_has_a_scene_and_draws_in_range():
    assert set(SCENES) == set(CONTENT_TYPES)
    for content, scene in SCENES.items():
        ops = scene(np.random.default_rng(0))
        assert ops, content
        img = draw(ops, STYLES["@pop_kyu"], 48, 32, np.random.default_rng(1))
        assert img.shape == (48, 48, 3) and 0.0 <= img.min() and img.max() <= 1.0, content


def test_an_empty_scene_is_the_background_and_a_shape_changes_only_its_window():
    style = STYLES["@pop_kyu"]  # flat shading: the background is one colour
    empty = draw([], style, 32, 32, np.random.default_rng(0))
    assert np.ptp(empty.reshape(-1, 3), axis=0).max() == 0.0
    disc = draw([("circle", (0.25, 0.25, 0.1), "primary")], style, 32, 32, np.random.default_rng(0))
    changed = np.argwhere(np.abs(disc - empty).max(axis=-1) > 0)  # same rng: same palette jitter
    assert len(changed) and changed.max() < 32 * 0.4  # only pixels near the disc at (0.25, 0.25), radius 0.1
