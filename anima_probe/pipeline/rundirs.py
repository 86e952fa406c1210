"""Where does a run go, and which run is the latest? Numbered run folders and their ``latest-<name>`` pointers.

``results/NNN-<experiment>/`` numbers are unique across experiment names even when processes race (the scan and
the mkdir happen under a lock directory); ``results/latest-<experiment>`` points at the highest-numbered run of
that experiment and never moves backwards. What a run folder holds is `anima_probe.pipeline.runs`' business.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from anima_probe.errors import InputError
from anima_probe.pipeline.atomic import atomic_write_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RUN = re.compile(r"^(\d{3,})-(.+)$")
_LOCK_STALE_S = 60.0  # the lock guards a scan + mkdir (milliseconds); older than this means a crashed holder


def check_name(name: str, what: str) -> str:
    """`name` if it is safe as one path component (run, experiment, file name), else a ValueError naming it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{what} {name!r} must be letters, digits, '.', '_' or '-' (no slashes or spaces)")
    return name


def _acquire_lock(lock: Path, timeout_s: float) -> None:
    """mkdir is atomic, so exactly one process at a time holds `lock`; others retry."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            lock.mkdir()
            return
        except FileExistsError:
            pass
        try:
            if time.time() - lock.stat().st_mtime > _LOCK_STALE_S:
                lock.rmdir()  # holder crashed mid-section; its run folder (if any) is already visible
                continue
        except FileNotFoundError:
            continue  # released between our mkdir and stat: try again at once
        time.sleep(0.005)
    raise TimeoutError(f"could not lock {lock} within {timeout_s} s; remove it if no run is starting")


class StagedRun:
    """A run folder being filled: write into `path`; `run_dir` is where it landed once the block ended cleanly."""

    def __init__(self, path: Path):
        self.path = path
        self.run_dir: Path | None = None


@contextlib.contextmanager
def staged_run_dir(root: str | Path = "results", name: str = "run", timeout_s: float = 30.0) -> Iterator[StagedRun]:
    """Fill a hidden staging folder in `root`; on a clean exit it is renamed to ``root/NNN-name/`` (the number
    taken under a lock directory, ``root/.new-run.lock``, so racing processes get unique numbers), on an exception or Ctrl-C removed. So a run folder appears only
    complete, and a run that fails half-way leaves nothing for later tools to find."""
    check_name(name, "run name")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staged = StagedRun(root / f".staging-{name}-{uuid.uuid4().hex[:12]}")
    staged.path.mkdir()
    try:
        yield staged
        lock = root / ".new-run.lock"
        _acquire_lock(lock, timeout_s)
        try:
            numbers = [int(m.group(1)) for p in root.iterdir() if (m := _RUN.match(p.name))]
            staged.run_dir = root / f"{max(numbers, default=-1) + 1:03d}-{name}"
            os.rename(staged.path, staged.run_dir)  # one step: readers see no folder or the whole one
        finally:
            lock.rmdir()
    except BaseException:
        shutil.rmtree(staged.path, ignore_errors=True)
        raise


def run_number(run_dir: str | Path) -> int:
    m = _RUN.match(Path(run_dir).name)
    if not m:
        raise InputError(f"{run_dir} is not a run folder named NNN-<name>")
    return int(m.group(1))


def resolve_latest(root: str | Path, name: str) -> Path | None:
    """The run folder ``root/latest-<name>`` points at (symlink or LATEST-style text file), or None."""
    link = Path(root) / f"latest-{check_name(name, 'experiment name')}"
    if link.is_symlink():
        return (link.parent / os.readlink(link)).resolve()
    if link.is_file():
        return (link.parent / link.read_text(encoding="utf-8").strip()).resolve()
    return None


def update_latest(root: str | Path, run_dir: str | Path) -> Path:
    """Point ``root/latest-<name>`` at `run_dir` unless it already points at a higher-numbered run.

    A relative symlink, swapped in atomically; where symlinks are unavailable (some Windows setups) the same
    path becomes a text file holding the run folder's name. The number check stops a slow older run that
    finishes last from hiding a newer one.
    """
    root, run_dir = Path(root), Path(run_dir)
    match = _RUN.match(run_dir.name)
    if match is None:
        raise InputError(f"{run_dir} is not a run folder named NNN-<name>")
    name = match.group(2)
    link = root / f"latest-{name}"
    current = resolve_latest(root, name)
    if current is not None and _RUN.match(current.name) and run_number(current) > run_number(run_dir):
        return link
    if link.exists() and not link.is_symlink() and not link.is_file():
        raise InputError(f"{link} exists and is not a latest-pointer; move it away")
    # A symlink cannot go through atomic_path (which writes files): it is swapped in by the same rename.
    tmp = root / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_text(link, run_dir.name + "\n")
    return link
