"""Can a reader ever see half a file? Not one this suite writes: every file goes through `atomic_path`.

A file is written under a temporary name in its own folder, flushed to disk, then renamed over the target with
``os.replace`` (atomic on POSIX and Windows), so a reader (a notebook, the regression gate, a resumed training
run, the embedding cache) sees either the old file or the complete new one, and a crash or a kill leaves the old
file and no stray temporary. Run folders, reports, caches, model files, checkpoints and manifests all use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; write the file there (any writer that takes a path); on a clean
    exit it is synced and renamed onto `path`, on an exception removed.

    The temporary lives in the target's folder because a rename is only atomic within one file system; it is
    created exclusively under a random name (two writers never share one) with the usual umask permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.open("xb").close()
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with indent 2; NaN/inf are refused (strict JSON readers and the regression gate reject them)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
