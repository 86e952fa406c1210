"""Which code, machine and files produced a number? The provenance a run record or a benchmark record carries.

`git_hash` names the commit (with ``+dirty`` when tracked files changed), `environment_info` the versions that
change numbers and the device, `sha256_file` a model file's content, `utc_now` the date. `REPO_ROOT` is the
checkout this package runs from: where experiments, notebooks, reports and baselines are found.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_hash(repo_root: str | Path | None = None) -> str:
    """HEAD commit of `repo_root` (default: this package's repo), "+dirty" if tracked files changed,
    "unknown" outside git or without a git binary."""
    cwd = Path(repo_root) if repo_root is not None else REPO_ROOT

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_info(device: str | None = None) -> dict[str, str]:
    """Versions that change numbers (python, torch, diffusers, transformers), platform, compute device.

    Versions come from package metadata, so diffusers/transformers are not imported just to be named.
    """
    if device is None:
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "platform": platform.platform(),
        "device": str(device),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
