"""Run folders: numbering (also under a race), the lock, latest pointers (symlink or text file)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from anima_probe.pipeline import rundirs
from anima_probe.pipeline.rundirs import resolve_latest, staged_run_dir, update_latest


def new_run_dir(root, name, timeout_s: float = 30.0):
    """An empty run folder made the one way run folders are made (a staged folder, renamed when complete)."""
    with staged_run_dir(root, name, timeout_s=timeout_s) as staged:
        pass
    return staged.run_dir

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
    numbers = sorted(rundirs.run_number(p) for p in made)
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

    monkeypatch.setattr(rundirs.os, "symlink", no_symlinks)
    run = new_run_dir(tmp_path, "pooling-nmi")
    link = update_latest(tmp_path, run)
    assert link.is_file() and not link.is_symlink()
    assert link.read_text().strip() == run.name
    assert resolve_latest(tmp_path, "pooling-nmi") == run.resolve()
