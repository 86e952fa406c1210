"""How is a research question turned into a reproducible run?

An experiment (one file in `experiments/`, lm-evaluation-harness style) is a frozen config dataclass, a function
``fn(ctx, config) -> Result`` that does no file I/O, a name and a version. This module finds the experiments,
applies ``key=value`` overrides (unknown keys are errors, nanoGPT style), and runs one: it seeds, loads the model
once, calls the function, and writes config.json, metrics.json and figures atomically into a new numbered folder
under ``results/`` (see `runs.write_run`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import inspect
import random
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anima_probe.errors import InputError, UnknownNameError, UsageError
from anima_probe.pipeline.freshness import source_fingerprint, staleness, write_stamp
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import ResultRecord, write_run
from anima_probe.pipeline.timing import timed

EXPERIMENTS_DIR = REPO_ROOT / "experiments"


@dataclass(frozen=True)
class Result:
    """What an experiment returns: flat metric keys ("nmi/max_padded") with their better direction."""

    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    tables: dict[str, str] = field(default_factory=dict)  # file name -> text (csv / markdown)


@dataclass(frozen=True)
class Context:
    """What a run hands an experiment: the frozen model, where caches live, whether to draw progress bars."""

    anima: Any  # anima_probe.model.anima.Anima
    cache_dir: Path
    progress: bool = True

    def memoized(self, fn: Callable) -> Callable:
        """`fn` with its results kept under ``cache_dir/statistics``, so a warm rerun of a costly statistic on the
        same inputs reads its result instead of refitting (pooling-nmi's ~1,400 KMeans fits). Only for pure,
        seeded functions. joblib.Memory hashes the arguments (arrays by value) and stores the result; the key adds
        the source of `fn`'s file and of `anima_probe.probes.stats`, so a fix to the statistic recomputes."""
        import joblib

        from anima_probe.probes import stats as metrics

        code = hashlib.sha256(b"".join(Path(f).read_bytes() for f in (inspect.getsourcefile(fn), metrics.__file__)))
        cached = joblib.Memory(self.cache_dir / "statistics", verbose=0).cache(
            _memo_call, ignore=["fn", "args", "kwargs"])
        name = f"{fn.__module__}.{fn.__qualname__}"

        def call(*args, **kwargs):
            # Configs are keyed as plain dicts: an experiment's module is loaded from its file, so its classes
            # cannot be pickled by name (which is how joblib would hash them).
            key = [dataclasses.asdict(a) if dataclasses.is_dataclass(a) else a for a in (*args, *kwargs.items())]
            return cached(name, code.hexdigest(), key, fn, args, kwargs)

        return call


def _memo_call(name: str, code: str, key: list, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """What `Context.memoized` caches: `name`, `code` and `key` (the arguments made hashable) are the key."""
    return fn(*args, **kwargs)


@dataclass(frozen=True)
class Experiment:
    name: str
    version: str
    question: str
    config: type  # a frozen dataclass whose fields all have defaults
    fn: Callable[[Context, Any], Result]
    needs_dit: bool = True  # False: text-only, the DiT blocks are never run
    needs_images: bool = False  # True: decodes or scores RGB images, so a latent-space model is loaded with its VAE

    @property
    def needs(self) -> tuple[str, ...]:
        """What `load_for` loads for it: the text encoder always, the DiT, the VAE (where the model has one)."""
        return ("text_encoder", *(("dit",) if self.needs_dit else ()), *(("vae",) if self.needs_images else ()))


def load_for(experiments: list[Experiment], model: str | Path | None = None, **kwargs):
    """The one loader of the runs: the model with what `experiments` declare they need (the VAE only when one of
    them makes images, and then a latent DiT without a VAE is an error naming them, before any of them runs)."""
    from anima_probe.model.anima import load_anima, require_images

    imaging = [e.name for e in experiments if e.needs_images]
    anima = load_anima(model, with_vae=bool(imaging), **kwargs)
    if imaging:
        require_images(anima, f"{', '.join(imaging)} make(s) RGB images")
    return anima


def discover(folder: str | Path = EXPERIMENTS_DIR) -> dict[str, Experiment]:
    """Every ``EXPERIMENT`` defined by a ``*.py`` file in `folder`, by name."""
    found: dict[str, Experiment] = {}
    for path in sorted(Path(folder).glob("*.py")):
        module_name = f"anima_probe_experiments.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        exp = getattr(module, "EXPERIMENT", None)
        if exp is None:
            continue
        if exp.name in found:
            raise InputError(f"{path}: experiment name {exp.name!r} is already defined by another file")
        found[exp.name] = exp
    return found


def get(name: str, registry: dict[str, Experiment] | None = None) -> Experiment:
    registry = discover() if registry is None else registry
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown experiment {name!r}{hint} Known: {sorted(registry)}")
    return registry[name]


def _parse(text: str, kind: Any, key: str) -> Any:
    """A command-line string -> a value of the field's declared type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _parse(text, kind, key)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse(p.strip(), item, key) for p in text.split(",") if p.strip())
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"override {key}={text!r}: expected true or false")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"override {key}={text!r}: expected {getattr(kind, '__name__', kind)}") from None


def apply_overrides(config: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """A copy of `config` with ``key=value`` strings (or a dict) applied; unknown keys name the closest ones."""
    hints = typing.get_type_hints(type(config))
    pairs = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    changes = {}
    for key, value in pairs:
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown config key {key!r} for {type(config).__name__}{hint} Keys: {sorted(hints)}")
        changes[key] = _parse(value, hints[key], key) if isinstance(value, str) else value
        if key.endswith("_regex"):  # the convention for a regex field: compiled here, before any work
            try:
                re.compile(changes[key])
            except re.error as err:
                raise UsageError(f"override {key}={changes[key]!r}: not a regular expression ({err})") from None
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as err:  # the config's own validation (__post_init__): the user's values
        if isinstance(err, UsageError):
            raise
        given = " ".join(f"{k}={v}" for k, v in pairs)
        raise UsageError(f"{type(config).__name__} {given}: {err}") from None


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"override {item!r} is not key=value")
    return key.strip(), value.strip()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_record(anima) -> dict[str, Any]:
    """``{"name", "files": {role: sha256}}`` for the result record (hashes memoised, see `fingerprint`)."""
    from anima_probe.pipeline.cache import fingerprint

    return {"name": anima.name, "files": {role: fingerprint(path) for role, path in sorted(anima.files.items())}}


def run(name: str, overrides: list[str] | dict | None = None, *, anima=None, model: str | Path | None = None,
        files: dict[str, str] | None = None, results: str | Path = "results", cache_dir: str | Path | None = None,
        device: str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
        registry: dict[str, Experiment] | None = None, source_root: str | Path = REPO_ROOT) -> Path:
    """Run one experiment and write its numbered run folder (stamped with its source, see freshness); returns it."""
    from anima_probe.pipeline.cache import default_cache_dir

    exp = get(name, registry)
    source = source_fingerprint(exp, source_root)  # taken before the run: a file edited while it runs is not its source
    config = apply_overrides(exp.config(), overrides or [])
    if anima is None:
        anima = load_for([exp], model, device=device, dtype=dtype, **(files or {}))
    seed_everything(getattr(config, "seed", 0))
    ctx = Context(anima, Path(cache_dir) if cache_dir else default_cache_dir(), progress)
    result = exp.fn(ctx, config)
    record = ResultRecord.create(exp.name, exp.version, dataclasses.asdict(config), result.metrics,
                                 result.higher_is_better, model=model_record(anima), device=str(anima.device))
    run_dir = write_run(results, record, figures=result.figures, extra_files=result.tables)
    write_stamp(run_dir, exp, source, source_root)  # lets `anima-probe report` reuse a default-config run (anima_probe.pipeline.freshness)
    return run_dir


def ensure_fresh(names: list[str], registry: dict, anima, results: str | Path, *, force: bool = False,
                 progress: bool = True, log=print, root: str | Path = REPO_ROOT) -> dict[str, Path]:
    """Rerun each stale experiment (all of them when `force`) with its default config; returns name -> run dir."""
    files = model_record(anima)["files"]
    out = {}
    for name in names:
        exp = registry[name]
        reasons = ["forced"] if force else staleness(exp, results, files, source_fingerprint(exp, root), root)
        if reasons:
            log(f"{name}: running ({'; '.join(reasons)})")
            took, _ = timed(lambda: run(name, [], anima=anima, results=results, progress=progress,  # noqa: B023
                                        registry=registry, source_root=root))
            log(f"{name}: done in {took.wall:.0f} s ({took.cpu:.0f} CPU-s in this process)")
        else:
            log(f"{name}: fresh, reusing {resolve_latest(results, name)}")
        out[name] = resolve_latest(results, name)
    return out
