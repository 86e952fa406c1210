"""The positive control's known answer is built into its data: quality tags leave the caption on exactly the chosen
half of the images, whose quality is planted as an Eq. 3 weight instead."""

from __future__ import annotations

import numpy as np
import pytest

from anima_probe.toyworld.positive_control import (
    planted_weight,
    strip_quality_tags,
    stripped_rows,
    training_texts,
)
from anima_probe.toyworld.world import generate, quality_tags


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",")]


@pytest.mark.parametrize(("caption", "quality", "expected"), [
    ("absurdres, masterpiece, best quality, score_9, @kiri_ama, mecha, robot, no humans", 9,
     "absurdres, @kiri_ama, mecha, robot, no humans"),
    ("low quality, score_1, worst quality, lowres, @aoi_mizu, scenery, landscape, no humans", 1,
     "lowres, @aoi_mizu, scenery, landscape, no humans"),
    ("score_4, 1girl, solo, @akane_iro", 4, "1girl, solo, @akane_iro"),
])
def test_quality_tags_leave_and_everything_else_keeps_its_place(caption, quality, expected):
    assert strip_quality_tags(caption, quality) == expected


def test_a_caption_without_its_quality_tags_is_an_error_not_a_silent_no_op():
    with pytest.raises(ValueError, match=r"lacks quality tag\(s\) \['score_9'\] of quality 9"):
        strip_quality_tags("masterpiece, best quality, 1girl, solo, @kiri_ama", 9)


def test_exactly_the_chosen_half_and_a_function_of_the_seed():
    mask = stripped_rows(1001, 0.5, seed=0)
    assert mask.dtype == bool and mask.sum() == 500  # round(0.5 * 1001): exact, not a Bernoulli draw
    assert np.array_equal(mask, stripped_rows(1001, 0.5, seed=0))
    assert not np.array_equal(mask, stripped_rows(1001, 0.5, seed=1))
    assert stripped_rows(10, 0.0, 0).sum() == 0 and stripped_rows(10, 1.0, 0).sum() == 10
    with pytest.raises(ValueError, match=r"strip fraction must be in \[0, 1\], got 1.5"):
        stripped_rows(10, 1.5, 0)


def test_the_planted_weight_puts_the_untagged_prompt_at_the_bottom_and_w_1_in_the_middle():
    assert planted_weight([1, 5, 9, 7]).tolist() == [0.0, 1.0, 2.0, 1.5]


def test_the_chosen_half_loses_its_tags_from_both_inputs_and_carries_its_quality_as_a_planted_weight():
    world = generate(60, seed=3)
    tt = training_texts(world, 0.5, seed=0, pair=("P+", "P-"))
    mask = stripped_rows(60, 0.5, seed=0)
    assert len(tt.texts) == 60 + 30 + 3 and tt.texts[-3:] == ["P+", "P-", ""]  # captions, stripped, pair, empty
    assert [tt.texts[i] for i in tt.pair] == ["P+", "P-"]
    for i, w in enumerate(world):
        quality = set(quality_tags(w.quality))
        text = _tags(tt.texts[tt.rows[i]])
        if mask[i]:
            assert tt.rows[i] >= 60 and not quality & set(text)
            assert text == [t for t in _tags(w.caption) if t not in quality]
            assert tt.planted[i] == (w.quality - 1) / 4
        else:
            assert tt.rows[i] == i and tt.texts[i] == w.caption and tt.planted[i] == 0.0
    assert (tt.rows >= 60).sum() == 30


def test_the_plain_world_has_no_pair_and_stripping_without_one_is_refused():
    world = generate(10, seed=3)
    plain = training_texts(world, 0.0, seed=0)
    assert plain.texts == [w.caption for w in world] + [""] and plain.pair == [] and not plain.planted.any()
    with pytest.raises(ValueError, match=r"stripped captions need the planted pair \(p\+, p-\)"):
        training_texts(world, 0.5, seed=0, pair=("P+", ""))


def _run_folder(path, experiment: str, projection: str):
    from anima_probe.pipeline.runs import ResultRecord

    path.mkdir()
    record = ResultRecord(experiment, "3", {"projection": projection}, {"x": 1.0}, {"x": True}, git_hash="abc")
    (path / "metrics.json").write_text(record.to_json())
    return str(path)


def test_only_the_positive_controls_guidance_dose_run_becomes_its_known_answer(tmp_path, monkeypatch):
    import json

    from anima_probe.errors import InputError
    from anima_probe.toyworld import positive_control as pc

    monkeypatch.setattr(pc, "KNOWN_ANSWER", tmp_path / "known.json")
    with pytest.raises(InputError, match="not the positive control's guidance-dose run"):
        pc.main([_run_folder(tmp_path / "a", "guidance-dose", "data/toyworld/pooled_text_proj.safetensors")])
    with pytest.raises(InputError, match="not the positive control's"):
        pc.main([_run_folder(tmp_path / "b", "scheduler-drift", f"positive_control/model/{pc.PROJECTION_FILE}")])
    assert not pc.KNOWN_ANSWER.exists()
    pc.main([_run_folder(tmp_path / "c", "guidance-dose", f"data/toyworld/positive_control/model/{pc.PROJECTION_FILE}")])
    known = json.loads(pc.KNOWN_ANSWER.read_text())
    assert known["metrics"] == {"x": 1.0} and known["command"] == pc.KNOWN_ANSWER_COMMAND and known["git_hash"] == "abc"
