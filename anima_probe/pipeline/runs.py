"""Where did this number come from? What a run folder holds: the result record, its config and its figures.

Every experiment run lands in ``results/NNN-<experiment>/`` (numbering and ``latest-<experiment>`` pointers:
`anima_probe.pipeline.rundirs`) with ``config.json`` (what was asked), ``metrics.json`` (a `ResultRecord`: what
came out, which direction is better, git hash, package versions, model file hashes) and its figures and tables,
every file written atomically, so a crashed or killed run never leaves a half-written JSON that a notebook or the
regression gate would then read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima_probe.errors import InputError
from anima_probe.pipeline.atomic import atomic_write_json, atomic_write_text
from anima_probe.pipeline.figures import save_figure
from anima_probe.pipeline.provenance import environment_info, git_hash, utc_now
from anima_probe.pipeline.rundirs import check_name, staged_run_dir, update_latest

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
        raise InputError(f"metrics must be a dict of key -> number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise InputError(f"metric key {key!r} must be a non-empty string")
        try:
            if isinstance(value, (bool, str)):
                raise TypeError
            number = float(value)  # numpy/torch scalars -> plain float so json can write them
        except (TypeError, ValueError):
            raise InputError(f"metric {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InputError(f"metric {key!r} is not finite ({number})")
        out[key] = number
    return out


def _check_directions(metrics: dict[str, float], higher_is_better: dict) -> dict[str, bool]:
    for key in metrics:
        if key not in higher_is_better:
            raise InputError(f"metric {key!r} has no higher_is_better entry")
    for key, value in higher_is_better.items():
        if key not in metrics:
            raise InputError(f"higher_is_better names {key!r}, which is not a metric")
        if not isinstance(value, bool):
            raise InputError(f"higher_is_better[{key!r}] must be true or false, got {value!r}")
    return dict(higher_is_better)


def _check_plain_parts(config: Any, env: Any, model: Any) -> None:
    for name, value in (("config", config), ("env", env), ("model", model)):
        if not isinstance(value, dict):
            raise InputError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        json.dumps(config, allow_nan=False)  # fail before a run folder exists, not halfway through
    except (TypeError, ValueError) as err:
        raise InputError(f"config is not plain JSON data: {err}") from None
    files = model.get("files")
    if not isinstance(model.get("name"), str) or not isinstance(files, dict):
        raise InputError(f"model must be {{'name': str, 'files': {{role: sha256}}}}, got {model!r}")
    for role, digest in files.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InputError(f"model file {role!r}: {digest!r} is not a hex sha256")


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
        check_name(self.experiment, "experiment")
        version = self.version
        if isinstance(version, bool) or not isinstance(version, (str, int)) or str(version) == "":
            raise InputError(f"version must be a non-empty string or int, got {version!r}")
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
            raise InputError(f"a result record must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_RECORD_KEYS))
        missing = [k for k in _RECORD_KEYS[:5] if k not in data]
        if unknown or missing:
            raise InputError(f"result record: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ResultRecord:
        return cls.from_dict(json.loads(text))


def _check_filename(name: str, taken: set[str]) -> str:
    check_name(name, "output file name")
    if name in taken:
        raise InputError(f"output file name {name!r} is already used in this run")
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
    config = {"experiment": record.experiment, "version": record.version, "config": record.config}
    with staged_run_dir(root, record.experiment) as staged:
        atomic_write_json(staged.path / "config.json", config)
        atomic_write_text(staged.path / "metrics.json", record.to_json())
        for key, fig in (figures or {}).items():
            save_figure(fig, staged.path / fig_paths[key])
        for key, text in (extra_files or {}).items():
            atomic_write_text(staged.path / key, text)
    update_latest(root, staged.run_dir)
    return staged.run_dir


def read_run(run_dir: str | Path) -> ResultRecord:
    """The `ResultRecord` stored in a run folder's metrics.json (errors name the file)."""
    path = Path(run_dir) / "metrics.json"
    try:
        return ResultRecord.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: {err}") from err
