"""Is an experiment's latest run still what the code would produce now, or must it be rerun?

`anima-probe report` reruns only stale experiments. The rule: the run ``results/latest-<name>`` points at is
**stale** when any of these differ from now, and fresh otherwise:

1. it does not exist (or its metrics.json cannot be read);
2. the experiment's version;
3. its config: a report shows the default config, so a run made with overrides does not count;
4. the model: the sha256 of every model file the run used (role -> hash, as `experiment.model_record` writes);
5. the source: a sha256 over the experiment's file, every ``anima_probe/**/*.py`` and ``*.json`` file and
   ``data/manifests/**`` (what the numbers are computed from besides the model), stored next to the run in
   ``source.json``. A run without that stamp (e.g. from an older checkout) is stale.

The source rule is deliberately coarse: any change to the package reruns every experiment. Deciding which package
files an experiment really depends on would need an import tracer and would miss data read at run time; a
rerun of the toy world costs minutes, a report that silently shows old numbers costs trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from anima_probe.errors import InputError
from anima_probe.pipeline.atomic import atomic_write_json
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import read_run

STAMP = "source.json"
SOURCE_GLOBS = ("anima_probe/**/*.py", "anima_probe/**/*.json", "data/manifests/**/*")


def experiment_file(exp) -> Path:
    """The file that defines `exp` (its fn's module), so the fingerprint follows the experiment wherever it lives."""
    path = inspect.getsourcefile(exp.fn)
    if path is None:
        raise InputError(f"experiment {exp.name!r}: cannot find the file that defines {exp.fn!r}")
    return Path(path).resolve()


def source_files(exp, root: str | Path = REPO_ROOT) -> list[Path]:
    root = Path(root)
    files = {experiment_file(exp)}
    for pattern in SOURCE_GLOBS:
        files.update(p.resolve() for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def source_fingerprint(exp, root: str | Path = REPO_ROOT) -> str:
    """sha256 over (path relative to `root`, sha256 of content) of every source file: content, not mtimes,
    so a fresh clone of the same commit counts as the same source."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for path in source_files(exp, root):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def default_config(exp) -> dict[str, Any]:
    """The default config as a run records it (JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(exp.config())))


def write_stamp(run_dir: str | Path, exp, source: str | None = None, root: str | Path = REPO_ROOT) -> Path:
    """Record the source fingerprint next to a run (written after the run, so a crash leaves it stale).

    Pass the fingerprint taken *before* the run: a file edited while it ran must not be stamped as its source.
    """
    stamp = {"experiment": exp.name, "source_sha256": source or source_fingerprint(exp, root),
             "rule": "anima_probe.pipeline.freshness: experiment file + anima_probe/**/*.py|json + data/manifests/**"}
    return atomic_write_json(Path(run_dir) / STAMP, stamp)


def read_stamp(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / STAMP
    try:
        return json.loads(path.read_text(encoding="utf-8"))["source_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def staleness(exp, results: str | Path, model_files: dict[str, str], source: str | None = None,
              root: str | Path = REPO_ROOT) -> list[str]:
    """Why the latest run of `exp` under `results` is stale (empty list: it is fresh).

    model_files is ``{role: sha256}`` of the model the report is for (`experiment.model_record(anima)["files"]`);
    source defaults to `source_fingerprint(exp)`.
    """
    run_dir = resolve_latest(results, exp.name)
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return [f"no run of {exp.name} under {results}"]
    try:
        record = read_run(run_dir)
    except ValueError as err:
        return [f"unreadable run: {err}"]
    reasons = []
    if record.version != str(exp.version):
        reasons.append(f"version {record.version} -> {exp.version}")
    if record.config != default_config(exp):
        changed = sorted(k for k in set(record.config) | set(default_config(exp))
                         if record.config.get(k) != default_config(exp).get(k))
        reasons.append(f"config differs from the defaults in {changed}")
    if record.model.get("files") != model_files:
        reasons.append(f"model files differ (run: {record.model.get('name')})")
    stamp = read_stamp(run_dir)
    if stamp is None:
        reasons.append(f"no {STAMP} source stamp")
    elif stamp != (source or source_fingerprint(exp, root)):
        reasons.append("source changed since the run")
    return reasons
