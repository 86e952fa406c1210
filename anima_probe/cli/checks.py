"""Can this command's work start? The checks every verb runs on its arguments before it loads or writes anything.

Each failure is a `UsageError` naming the flag (exit 2, one line), raised before the model is loaded: on the real
model a flag found wrong after the work costs hours. Folders are probed by creating (and removing) a file in the
nearest existing ancestor, because permission bits say nothing on a read-only mount or to root.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from anima_probe.errors import UsageError


def writable_folder(path: str | Path, flag: str) -> Path:
    """`path` if it is (or can be made) a folder we can write into; creates nothing that stays."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {probe} ({err.strerror})") from None
    return path


def usable_cache() -> None:
    """Keep the cache folder if it can be written; else one warning and a scratch cache for this process only
    (removed at exit), so the run goes on without reading or keeping a cache instead of crashing in the middle."""
    from anima_probe.pipeline.cache import default_cache_dir

    folder = default_cache_dir()
    try:
        writable_folder(folder, "cache folder")
    except UsageError as err:
        scratch = tempfile.mkdtemp(prefix="anima-probe-cache-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        os.environ["ANIMA_PROBE_CACHE"] = scratch
        print(f"anima-probe: warning: {err}; running without the cache (set $ANIMA_PROBE_CACHE to a writable "
              "folder to keep one)", file=sys.stderr)


def finite(flag: str, text: str, *, low: float | None = None, high: float | None = None) -> float:
    """One finite number from a flag's text, within [low, high]."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} {text}: must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UsageError(f"{flag} {text}: must be in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}]")
    return value


def number_list(flag: str, text: str, *, allow_off: bool = False, low: float | None = None) -> list[float | None]:
    """A comma-separated grid axis (``off`` allowed where it means no modulation); every entry finite."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise UsageError(f"{flag} {text!r}: an empty entry")
    return [None if allow_off and t == "off" else finite(flag, t, low=low) for t in items]


def at_least(flag: str, value: int, low: int) -> int:
    if value < low:
        raise UsageError(f"{flag} {value}: must be >= {low}")
    return value


def regex(flag: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"{flag} {pattern!r}: not a regular expression ({err})") from None


def sigma_schedule(name: str, steps: int, shift: float) -> None:
    """The sampler's sigma schedule can be built from these flags (bong_tangent needs two steps, the simple
    schedule a shift above 0): the schedule's own check, run before the model loads, its message naming the flags."""
    from anima_probe.guidance.sigmas import schedule_sigmas

    try:
        schedule_sigmas(name, steps, shift)
    except ValueError as err:
        raise UsageError(f"--sigmas {name} --steps {steps} --shift {shift:g}: {err}") from None
