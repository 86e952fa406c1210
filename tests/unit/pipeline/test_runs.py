"""What a run folder holds: the result record schema and its round trip, write_run and read_run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anima_probe.pipeline.figures import new_figure
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import ResultRecord, read_run, write_run

SHA = "ab" * 32


def _record(**overrides) -> ResultRecord:
    fields = dict(
        experiment="pooling-nmi",
        version="1",
        config={"seeds": [0, 1, 2], "k": 37},
        metrics={"nmi/max_padded": 0.9, "nmi/eos": 0.1},
        higher_is_better={"nmi/max_padded": True, "nmi/eos": True},
        env={"python": "3.x", "device": "cpu"},
        model={"name": "anima-tiny", "files": {"dit": SHA}},
    )
    fields.update(overrides)
    return ResultRecord(**fields)


def test_record_json_round_trip_and_number_coercion():
    rec = _record(version=2, metrics={"nmi/max_padded": np.float32(0.5), "nmi/eos": 1})
    assert rec.version == "2"
    assert type(rec.metrics["nmi/max_padded"]) is float
    back = ResultRecord.from_json(rec.to_json())
    assert back == rec
    assert set(json.loads(rec.to_json())) == {
        "experiment", "version", "config", "metrics", "higher_is_better", "git_hash", "date", "env", "model"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"higher_is_better": {"nmi/max_padded": True}}, "metric 'nmi/eos' has no higher_is_better"),
        (
            {"metrics": {"nmi/max_padded": float("nan"), "nmi/eos": 0.1}},
            "metric 'nmi/max_padded' is not finite",
        ),
        ({"metrics": {"nmi/max_padded": "0.9", "nmi/eos": 0.1}}, "metric 'nmi/max_padded' must be a number"),
        ({"metrics": {"nmi/max_padded": True, "nmi/eos": 0.1}}, "metric 'nmi/max_padded' must be a number"),
        ({"higher_is_better": {"nmi/max_padded": True, "nmi/eos": 1}}, r"higher_is_better\['nmi/eos'\]"),
        ({"higher_is_better": {"nmi/max_padded": True, "nmi/eos": True, "x": True}}, "names 'x'"),
        ({"config": {"device": object()}}, "config is not plain JSON"),
        ({"model": {"name": "m", "files": {"dit": "abc"}}}, "model file 'dit'"),
        ({"experiment": "has space"}, "experiment 'has space'"),
    ],
)
def test_record_validation_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        _record(**overrides)


def test_from_json_rejects_unknown_and_missing_keys():
    data = json.loads(_record().to_json())
    data["metricz"] = data.pop("metrics")
    with pytest.raises(ValueError, match=r"unknown keys \['metricz'\], missing keys \['metrics'\]"):
        ResultRecord.from_dict(data)


def test_write_run_writes_files_and_latest(tmp_path):
    rec = _record()
    fig = new_figure()
    fig.add_subplot().bar(["a", "b"], [1, 2])
    run = write_run(tmp_path, rec, figures={"nmi_bar": fig}, extra_files={"notes.md": "# hi\n"})
    assert run.name == "000-pooling-nmi"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "nmi_bar.png", "notes.md"]
    assert json.loads((run / "config.json").read_text()) == {
        "experiment": "pooling-nmi", "version": "1", "config": {"seeds": [0, 1, 2], "k": 37}
    }  # fmt: skip
    assert read_run(run) == rec
    assert resolve_latest(tmp_path, "pooling-nmi") == run.resolve()


def test_write_run_refuses_clobbering_names_before_creating_a_folder(tmp_path):
    with pytest.raises(ValueError, match="'metrics.json' is already used"):
        write_run(tmp_path, _record(), extra_files={"metrics.json": "x"})
    with pytest.raises(ValueError, match="output file name '../x'"):
        write_run(tmp_path, _record(), extra_files={"../x": "x"})
    assert list(tmp_path.iterdir()) == []


def test_read_run_names_the_file(tmp_path):
    run = tmp_path / "000-x"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"experiment": "x"}))
    with pytest.raises(ValueError, match=r"000-x/metrics.json: result record"):
        read_run(run)
