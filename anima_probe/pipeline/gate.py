"""Does every experiment of a tier still give its baseline's numbers? The tier-wide regression gate.

``anima-probe regress [--tier toy]`` compares the latest run of every experiment with
``reports/baselines/<tier>/<experiment>.json`` (per-run logic in `anima_probe.pipeline.baselines`), prints a table per
experiment and exits 1 on a regression, a missing metric / run / baseline, or a version, model or config
mismatch; an improvement beyond tolerance is flagged and fails only with ``--strict``.

Tolerances are measured, not guessed (`measure_tolerances`, ``--measure``): the experiment is run with its default
seed and the next ``seeds - 1`` seeds, and each metric gets ``abs_tol = max(k * sd, floor_abs)`` with
``rel_tol = floor_rel``, where sd is the sample sd over those runs (k = 3 by default). The floor keeps metrics
that no seed moves (a chance level, a deterministic cosine) from getting a zero tolerance that float noise on
another CPU would break. ``--update`` accepts the latest runs as new values and keeps the tolerances.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from anima_probe.errors import InputError, MissingFileError, UsageError
from anima_probe.pipeline.baselines import (
    Check,
    baseline_path,
    compare,
    format_table,
    gate,
    load_baseline,
    save_baseline,
    update_baseline,
)
from anima_probe.pipeline.provenance import REPO_ROOT, utc_now
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import ResultRecord, read_run

TIERS = {"toy": "the bundled toy world (data/toyworld/model)", "anima": "the real Anima weights (--model DIR)"}


def tier_results(tier: str) -> Path:
    """Where a tier's runs live: results/ for the toy world, results/<tier>/ otherwise; $ANIMA_PROBE_RESULTS
    replaces results/ (CI points it at a scratch folder, so nothing is written into the checkout)."""
    root = Path(os.environ.get("ANIMA_PROBE_RESULTS", "results"))
    return root if tier == "toy" else root / tier


def provenance_checks(record: ResultRecord, baseline: dict) -> list[Check]:
    """A run from another model or another config measures something else than the baseline did."""
    out = []
    model = baseline.get("model")
    if model is not None and model.get("files") != record.model.get("files"):
        differ = sorted(r for r in set(model.get("files", {})) | set(record.model["files"])
                        if model.get("files", {}).get(r) != record.model["files"].get(r))
        out.append(Check("model", None, None, None, "model-mismatch",
                         f"baseline model {model.get('name')}, run model {record.model['name']}; files {differ}"))
    config = baseline.get("config")
    if config is not None and config != record.config:
        differ = sorted(k for k in set(config) | set(record.config) if config.get(k) != record.config.get(k))
        out.append(Check("config", None, None, None, "config-mismatch", f"run config differs in {differ}"))
    return out


def tier_names(tier: str, root: str | Path = REPO_ROOT, registry: dict | None = None) -> list[str]:
    """Every experiment that exists or has a baseline in the tier: both must be gated."""
    from anima_probe.pipeline.experiment import discover

    registry = discover() if registry is None else registry
    folder = baseline_path(tier, "x", root).parent
    return sorted(set(registry) | {p.stem for p in folder.glob("*.json")})


def check_experiment(name: str, tier: str, results: str | Path, root: str | Path = REPO_ROOT) -> list[Check]:
    path, root = baseline_path(tier, name, root), Path(root)
    if not path.exists():
        return [Check("baseline", None, None, None, "missing",
                      f"no {path.relative_to(root) if path.is_relative_to(root) else path}; record it with "
                      f"`anima-probe regress --tier {tier} --measure {name}`")]
    run_dir = resolve_latest(results, name)
    if run_dir is None:
        return [Check("run", None, None, None, "missing", f"no run under {results}; `anima-probe report` makes one")]
    record, base = read_run(run_dir), load_baseline(path)
    mismatch = provenance_checks(record, base)
    return mismatch or compare(record.metrics, record.version, base, record.experiment)


def check_tier(tier: str, results: str | Path, names: list[str], root: str | Path = REPO_ROOT) -> dict[str, list[Check]]:
    return {name: check_experiment(name, tier, results, root) for name in names}


def accept_runs(tier: str, results: str | Path, names: list[str], root: str | Path = REPO_ROOT) -> list[Path]:
    """``--update``: the latest runs become the baseline values (model and config too); tolerances are kept."""
    written = []
    for name in names:
        run_dir = resolve_latest(results, name)
        if run_dir is None:
            raise MissingFileError(f"{name}: no run under {results} to accept")
        record, path = read_run(run_dir), baseline_path(tier, name, root)
        base = load_baseline(path) if path.exists() else {"experiment": name, "version": record.version, "metrics": {}}
        new = update_baseline(base, record.metrics, record.version, record.higher_is_better)
        written.append(save_baseline(path, new | {"model": record.model, "config": record.config}))
    return written


def _sample_sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def tolerance_entries(reference: ResultRecord, samples: list[dict[str, float]], seeds: list[int], k: float,
                      floor_abs: float, floor_rel: float) -> dict[str, dict]:
    """Baseline entries: the reference run's values, abs_tol = max(k * sd over `samples`, floor_abs)."""
    entries = {}
    for key, value in reference.metrics.items():
        lacking = [s for s, m in zip(seeds, samples) if key not in m]
        if lacking:
            raise InputError(f"{reference.experiment}: metric {key!r} is missing from the runs with seeds {lacking}")
        sd = _sample_sd([m[key] for m in samples])
        spread = (f"{k:g} sd over seeds {seeds[0]}..{seeds[-1]} (sd {sd:.3g})" if len(seeds) > 1
                  else "no seed field: floor only")
        entries[key] = {"value": value, "abs_tol": max(k * sd, floor_abs), "rel_tol": floor_rel,
                        "higher_is_better": reference.higher_is_better[key],
                        "tolerance_source": f"{spread}, floor max({floor_abs:g}, {floor_rel:g} x value); "
                                            f"measured {utc_now()[:10]} on model {reference.model['name']}"}
    return entries


def reusable_run(pool: Path, exp, seed: int, reference: ResultRecord) -> Path | None:
    """A finished seed run in `pool` for the same version, model files and (default + seed) config, or None.

    Makes --measure resumable. The source stamp is not required here: a tolerance is an estimate of the spread
    over seeds, re-measured on purpose, and the reference run's values (which the gate compares) are fresh.
    """
    from anima_probe.pipeline.freshness import default_config

    want = default_config(exp) | {"seed": seed}
    found = pool.glob(f"[0-9][0-9][0-9]*-{exp.name}") if pool.is_dir() else []
    for run_dir in sorted(found, reverse=True):
        try:
            record = read_run(run_dir)
        except ValueError:
            continue  # a damaged or partial folder is simply not reused
        if (record.experiment, record.version, record.config, record.model["files"]) == (
                exp.name, str(exp.version), want, reference.model["files"]):
            return run_dir
    return None


def measure_tolerances(name: str, tier: str, results: str | Path, *, anima, registry: dict, seeds: int = 5,
                       k: float = 3.0, floor_abs: float = 1e-6, floor_rel: float = 0.02,
                       root: str | Path = REPO_ROOT, progress: bool = False, log=print) -> Path:
    """Run `name` over seeds, write its baseline with measured tolerances; returns the baseline path.

    The default-config run (rerun only if stale) gives the values; the extra seeds run into
    ``<results>/tolerance-runs/`` so the latest pointers the reports use stay on default-config runs, and a
    finished seed run there is reused (`reusable_run`), so an interrupted measurement resumes.
    """
    from anima_probe.pipeline.experiment import ensure_fresh, run

    exp = registry[name]
    reference = read_run(ensure_fresh([name], registry, anima, results, progress=progress, log=log)[name])
    first = getattr(exp.config(), "seed", None)
    seed_list = [first] if first is None else list(range(first, first + seeds))
    samples, pool = [reference.metrics], Path(results) / "tolerance-runs"
    for seed in seed_list[1:]:
        extra = reusable_run(pool, exp, seed, reference)
        log(f"{name}: seed={seed} {'reused from ' + extra.name if extra else 'tolerance run'}")
        if extra is None:
            extra = run(name, {"seed": seed}, anima=anima, results=pool, progress=progress, registry=registry)
        samples.append(read_run(extra).metrics)
    base = {"experiment": name, "version": reference.version,
            "metrics": tolerance_entries(reference, samples, seed_list, k, floor_abs, floor_rel),
            "model": reference.model, "config": reference.config,
            "measured": {"seeds": seed_list, "k": k, "floor_abs": floor_abs, "floor_rel": floor_rel,
                         "command": f"anima-probe regress --tier {tier} --measure {name} --seeds {seeds}"}}
    return save_baseline(baseline_path(tier, name, root), base)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiments", nargs="*", help="experiment names (default: every experiment and baseline)")
    p.add_argument("--tier", default="toy", choices=sorted(TIERS), help="baseline folder reports/baselines/<tier>/")
    p.add_argument("--results", default=None, help="run folders (default: results/, or results/<tier>/)")
    p.add_argument("--strict", action="store_true", help="fail on improvements beyond tolerance too")
    p.add_argument("--update", action="store_true", help="accept the latest runs as the new values")
    p.add_argument("--measure", action="store_true", help="(re)measure tolerances over seeds and write baselines")
    p.add_argument("--seeds", type=int, default=5, help="runs per experiment for --measure (default seed first)")


def cli(args: argparse.Namespace, root: str | Path = REPO_ROOT, registry: dict | None = None) -> int:
    """`anima-probe regress`: print the gate's table per experiment and return its exit code."""
    from anima_probe.pipeline.experiment import discover

    registry = discover() if registry is None else registry
    results = Path(args.results) if args.results else tier_results(args.tier)
    names = args.experiments or tier_names(args.tier, root, registry)
    if args.measure:
        from anima_probe.model.options import model_kwargs
        from anima_probe.pipeline.experiment import load_for

        if args.tier != "toy" and args.model is None:
            raise UsageError(f"--tier {args.tier} --measure needs --model DIR (the weights the tier is for)")
        anima = load_for([registry[n] for n in names if n in registry], **model_kwargs(args))
        for name in names:
            print(f"wrote {measure_tolerances(name, args.tier, results, anima=anima, registry=registry, root=root)}")
        return 0
    if args.update:
        for path in accept_runs(args.tier, results, names, root):
            print(f"updated {path}")
        return 0
    failed = []
    for name, checks in check_tier(args.tier, results, names, root).items():
        print(f"== {name} (tier {args.tier}, runs in {results})")
        print(format_table(checks))
        if gate(checks, strict=args.strict):
            failed.append(name)
        elif any(c.status == "improved" for c in checks):
            print(f"note: {name} improved beyond tolerance; accept it on purpose with --update\n")
    verdict = f"FAILED: {', '.join(failed)}" if failed else "passed"
    print(f"regression gate, tier {args.tier}: {verdict} ({len(names)} experiments)")
    return 1 if failed else 0
