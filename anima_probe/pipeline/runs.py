"""Where did this number come from? Numbered, atomic, self-describing result folders.

Every experiment run lands in ``results/NNN-<experiment>/`` with ``config.json`` (what was asked),
``metrics.json`` (a `ResultRecord`: what came out, which direction is better, git hash, package versions,
model file hashes) and its figures. Files are written atomically (temp file in the same folder, fsync,
``os.replace``) so a crashed or killed run never leaves a half-written JSON that a notebook or the regression
gate would then read. ``results/latest-<experiment>`` points at the newest run of each experiment.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RUN = re.compile(r"^(\d{3,})-(.+)$")
_LOCK_STALE_S = 60.0  # the lock guards a scan + mkdir (milliseconds); older than this means a crashed holder


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '.', '_' or '-' (no slashes or spaces)")
    return name


# ---------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with indent 2; NaN/inf are refused (strict JSON readers and the regression gate reject them)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def new_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas: no pyplot global state, no GUI backend needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Render `fig` in memory (format from the suffix, default .png) and write it atomically."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def update_section(path: str | Path, section: str, markdown: str, title: str = "Performance") -> Path:
    """Replace (or append) the block between ``<!-- begin:section -->`` and ``<!-- end:section -->`` in a shared
    generated report, so each benchmark script rewrites only its own part of e.g. reports/performance.md."""
    _check_name(section, "section")
    path = Path(path)
    begin, end = f"<!-- begin:{section} -->", f"<!-- end:{section} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# {title}\n"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    return atomic_write_text(path, text)


# ---------------------------------------------------------------- run folders


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


def new_run_dir(root: str | Path = "results", name: str = "run", timeout_s: float = 30.0) -> Path:
    """Create and return ``root/NNN-name/`` with NNN one past the highest number already in `root`.

    Numbers are unique across experiment names even when processes race: the scan + mkdir happen under a
    lock directory (``root/.new-run.lock``) taken with mkdir exclusivity and retried until free.
    """
    _check_name(name, "run name")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".new-run.lock"
    _acquire_lock(lock, timeout_s)
    try:
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := _RUN.match(p.name))]
        run_dir = root / f"{max(numbers, default=-1) + 1:03d}-{name}"
        run_dir.mkdir()  # exclusive: FileExistsError here would mean the lock was broken
        return run_dir
    finally:
        lock.rmdir()


def run_number(run_dir: str | Path) -> int:
    m = _RUN.match(Path(run_dir).name)
    if not m:
        raise ValueError(f"{run_dir} is not a run folder named NNN-<name>")
    return int(m.group(1))


def resolve_latest(root: str | Path, name: str) -> Path | None:
    """The run folder ``root/latest-<name>`` points at (symlink or LATEST-style text file), or None."""
    link = Path(root) / f"latest-{_check_name(name, 'experiment name')}"
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
        raise ValueError(f"{run_dir} is not a run folder named NNN-<name>")
    name = match.group(2)
    link = root / f"latest-{name}"
    current = resolve_latest(root, name)
    if current is not None and _RUN.match(current.name) and run_number(current) > run_number(run_dir):
        return link
    if link.exists() and not link.is_symlink() and not link.is_file():
        raise ValueError(f"{link} exists and is not a latest-pointer; move it away")
    tmp = root / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_text(link, run_dir.name + "\n")
    return link


# ---------------------------------------------------------------- provenance


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


# ---------------------------------------------------------------- the result record

_RECORD_KEYS = (
    "experiment",
    "version",
    "config",
    "metrics",
    "higher_is_better",
    "git_hash",
    "date",
    "env",
    "model",
)


def _finite_metrics(metrics: dict) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of key -> number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric key {key!r} must be a non-empty string")
        try:
            if isinstance(value, (bool, str)):
                raise TypeError
            number = float(value)  # numpy/torch scalars -> plain float so json can write them
        except (TypeError, ValueError):
            raise ValueError(f"metric {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r} is not finite ({number})")
        out[key] = number
    return out


def _check_directions(metrics: dict[str, float], higher_is_better: dict) -> dict[str, bool]:
    for key in metrics:
        if key not in higher_is_better:
            raise ValueError(f"metric {key!r} has no higher_is_better entry")
    for key, value in higher_is_better.items():
        if key not in metrics:
            raise ValueError(f"higher_is_better names {key!r}, which is not a metric")
        if not isinstance(value, bool):
            raise ValueError(f"higher_is_better[{key!r}] must be true or false, got {value!r}")
    return dict(higher_is_better)


def _check_plain_parts(config: Any, env: Any, model: Any) -> None:
    for name, value in (("config", config), ("env", env), ("model", model)):
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        json.dumps(config, allow_nan=False)  # fail before a run folder exists, not halfway through
    except (TypeError, ValueError) as err:
        raise ValueError(f"config is not plain JSON data: {err}") from None
    files = model.get("files")
    if not isinstance(model.get("name"), str) or not isinstance(files, dict):
        raise ValueError(f"model must be {{'name': str, 'files': {{role: sha256}}}}, got {model!r}")
    for role, digest in files.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"model file {role!r}: {digest!r} is not a hex sha256")


@dataclass(frozen=True)
class ResultRecord:
    """One run's outcome, lm-evaluation-harness style.

    metrics use flat keys ("nmi/max_padded"); higher_is_better has exactly the same keys. model is
    ``{"name": str, "files": {role: sha256}}`` so a number can be traced to the exact checkpoint files.
    """

    experiment: str
    version: str
    config: dict[str, Any]
    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    git_hash: str = "unknown"
    date: str = field(default_factory=utc_now)
    env: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "none", "files": {}})

    def __post_init__(self) -> None:
        _check_name(self.experiment, "experiment")
        version = self.version
        if isinstance(version, bool) or not isinstance(version, (str, int)) or str(version) == "":
            raise ValueError(f"version must be a non-empty string or int, got {version!r}")
        object.__setattr__(self, "version", str(version))  # "1" and 1 must compare equal in the gate
        metrics = _finite_metrics(self.metrics)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "higher_is_better", _check_directions(metrics, self.higher_is_better))
        _check_plain_parts(self.config, self.env, self.model)

    @classmethod
    def create(
        cls,
        experiment: str,
        version: str | int,
        config: dict,
        metrics: dict,
        higher_is_better: dict,
        model: dict | None = None,
        device: str | None = None,
        repo_root: str | Path | None = None,
    ) -> ResultRecord:
        """A record with git hash, date and environment filled in from the running process."""
        return cls(
            experiment,
            version,
            dict(config),
            metrics,
            higher_is_better,
            git_hash=git_hash(repo_root),
            env=environment_info(device),
            model=model or {"name": "none", "files": {}},
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRecord:
        if not isinstance(data, dict):
            raise ValueError(f"a result record must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_RECORD_KEYS))
        missing = [k for k in _RECORD_KEYS[:5] if k not in data]
        if unknown or missing:
            raise ValueError(f"result record: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ResultRecord:
        return cls.from_dict(json.loads(text))


def _check_filename(name: str, taken: set[str]) -> str:
    _check_name(name, "output file name")
    if name in taken:
        raise ValueError(f"output file name {name!r} is already used in this run")
    taken.add(name)
    return name


def write_run(
    root: str | Path,
    record: ResultRecord,
    figures: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a run folder: config.json, metrics.json (the full record), figures, extra text files.

    Figures are named by key ("nmi_bar" -> nmi_bar.png; give a suffix for another format). The latest
    pointer moves only after every file is in place, so it never points at a partial run.
    """
    taken = {"config.json", "metrics.json"}
    fig_paths = {}
    for key in figures or {}:
        fig_paths[key] = _check_filename(key if Path(key).suffix else f"{key}.png", taken)
    for key in extra_files or {}:
        _check_filename(key, taken)
    run_dir = new_run_dir(root, record.experiment)
    config = {"experiment": record.experiment, "version": record.version, "config": record.config}
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_text(run_dir / "metrics.json", record.to_json())
    for key, fig in (figures or {}).items():
        save_figure(fig, run_dir / fig_paths[key])
    for key, text in (extra_files or {}).items():
        atomic_write_text(run_dir / key, text)
    update_latest(root, run_dir)
    return run_dir


def read_run(run_dir: str | Path) -> ResultRecord:
    """The `ResultRecord` stored in a run folder's metrics.json (errors name the file)."""
    path = Path(run_dir) / "metrics.json"
    try:
        return ResultRecord.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err
