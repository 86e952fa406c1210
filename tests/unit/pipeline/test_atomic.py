"""Atomic writes: a reader sees the old file or the whole new one; a failed write leaves no temporary."""

from __future__ import annotations

import json
import os

import pytest
import torch

from anima_probe.pipeline.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


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


def test_atomic_path_serves_writers_that_take_a_path_and_cleans_up_after_a_crash(tmp_path):
    target = tmp_path / "weights.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".weights.pt.")
        torch.save({"w": torch.arange(3)}, tmp)
    assert torch.load(target)["w"].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("killed mid-write")
    assert torch.load(target)["w"].tolist() == [0, 1, 2]  # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, like a plain open(); mkstemp gives 0o600
