"""Run folders: numbering (also under a race), atomic writes, latest pointers, the result record schema."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from anima_probe.pipeline import runs
from anima_probe.pipeline.runs import (
    ResultRecord,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    git_hash,
    new_figure,
    new_run_dir,
    read_run,
    resolve_latest,
    save_figure,
    sha256_file,
    update_latest,
    write_run,
)

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


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"y": [1, 2]})
    assert json.loads(target.read_text()) == {"y": [1, 2]}
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_failed_json_write_keeps_old_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_save_figure_writes_png(tmp_path):
    fig = new_figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve")
    assert path.name == "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_numbers_increase_across_names(tmp_path):
    a = new_run_dir(tmp_path, "pooling-nmi")
    b = new_run_dir(tmp_path, "quality-direction")
    (tmp_path / "041-manual").mkdir()
    c = new_run_dir(tmp_path, "pooling-nmi")
    assert [a.name, b.name, c.name] == ["000-pooling-nmi", "001-quality-direction", "042-pooling-nmi"]
    assert not (tmp_path / ".new-run.lock").exists()


def test_racing_run_dirs_get_distinct_numbers(tmp_path, monkeypatch):
    real_iterdir = Path.iterdir

    def slow_iterdir(self):
        entries = list(real_iterdir(self))
        time.sleep(0.01)  # widen the scan-then-mkdir window so an unlocked version would collide
        return iter(entries)

    monkeypatch.setattr(Path, "iterdir", slow_iterdir)
    barrier = threading.Barrier(8)
    made: list[Path] = []

    def worker(i: int) -> None:
        barrier.wait()
        made.append(new_run_dir(tmp_path, f"exp{i % 3}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(runs.run_number(p) for p in made)
    assert numbers == list(range(8))


def test_stale_lock_is_broken_and_live_lock_times_out(tmp_path):
    lock = tmp_path / ".new-run.lock"
    lock.mkdir()
    with pytest.raises(TimeoutError, match="could not lock"):
        new_run_dir(tmp_path, "x", timeout_s=0.05)
    os.utime(lock, (0, 0))  # pretend the holder crashed long ago
    assert new_run_dir(tmp_path, "x").name == "000-x"


def test_bad_run_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="run name '../x'"):
        new_run_dir(tmp_path, "../x")


def test_latest_pointer_follows_newest_and_ignores_older(tmp_path):
    first = new_run_dir(tmp_path, "pooling-nmi")
    second = new_run_dir(tmp_path, "pooling-nmi")
    link = update_latest(tmp_path, second)
    assert link.name == "latest-pooling-nmi"
    assert link.is_symlink() and os.readlink(link) == second.name  # relative: the tree can move
    update_latest(tmp_path, first)  # a slow older run finishing last must not win
    assert resolve_latest(tmp_path, "pooling-nmi") == second.resolve()
    assert resolve_latest(tmp_path, "other") is None


def test_latest_falls_back_to_text_file_without_symlinks(tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported")

    monkeypatch.setattr(runs.os, "symlink", no_symlinks)
    run = new_run_dir(tmp_path, "pooling-nmi")
    link = update_latest(tmp_path, run)
    assert link.is_file() and not link.is_symlink()
    assert link.read_text().strip() == run.name
    assert resolve_latest(tmp_path, "pooling-nmi") == run.resolve()


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
    run = new_run_dir(tmp_path, "x")
    (run / "metrics.json").write_text(json.dumps({"experiment": "x"}))
    with pytest.raises(ValueError, match=r"000-x/metrics.json: result record"):
        read_run(run)


def test_git_hash_inside_and_outside_git(tmp_path):
    assert git_hash(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("1")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    head = git_hash(tmp_path)
    assert len(head) == 40 and all(c in "0123456789abcdef" for c in head)
    (tmp_path / "f").write_text("2")
    assert git_hash(tmp_path) == head + "+dirty"


def test_environment_info_and_sha256(tmp_path):
    env = environment_info(device="cpu")
    assert set(env) == {"python", "torch", "diffusers", "transformers", "platform", "device"}
    assert env["device"] == "cpu" and env["torch"].startswith("2.")
    (tmp_path / "w").write_bytes(b"abc")
    assert sha256_file(tmp_path / "w") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_update_section_rewrites_only_its_own_block(tmp_path):
    from anima_probe.pipeline.runs import update_section

    path = tmp_path / "performance.md"
    update_section(path, "a", "first a")
    update_section(path, "b", "only b")
    update_section(path, "a", "second a")
    text = path.read_text()
    assert "second a" in text and "first a" not in text and "only b" in text
    assert text.index("second a") < text.index("only b")  # a keeps its place
    with pytest.raises(ValueError):
        update_section(path, "bad name/..", "x")
