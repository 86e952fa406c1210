"""Did a finding move? The regression gate CI runs after the experiments.

A baseline (``reports/baselines/<tier>/<experiment>.json``) stores each metric's accepted value with a
tolerance and where that tolerance came from::

    {"experiment": "pooling-nmi", "version": "1",
     "metrics": {"nmi/max_padded": {"value": 0.926, "abs_tol": 0.02, "rel_tol": 0.0,
                                    "higher_is_better": true, "tolerance_source": "3 sd over 5 seeds"}}}

`compare` checks a run's metrics against it, `gate` turns the checks into an exit code, `format_table` prints
them, `update_baseline` accepts a run as the new baseline without losing the tolerances' provenance.
Command line: ``python -m anima_probe.pipeline.baselines RUN_DIR_OR_METRICS_JSON --tier toy [--strict] [--update]`` for one
run; ``anima-probe regress [--tier toy] [--strict] [--update] [--measure]`` for every experiment of a tier
(`anima_probe.pipeline.gate`). Tiers: ``toy`` (the bundled toy world, runs in
``results/``) and ``anima`` (the real weights, runs in ``results/anima/``, recorded on a GPU machine). A baseline
also stores the run's model file hashes and config: a run from another model or config is a mismatch, not a
comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima_probe.errors import InputError
from anima_probe.pipeline.atomic import atomic_write_json
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.runs import ResultRecord, read_run

STATUSES = ("ok", "improved", "new", "regressed", "missing", "version-mismatch", "model-mismatch",
            "config-mismatch")
FAILING = frozenset({"regressed", "missing", "version-mismatch", "model-mismatch", "config-mismatch"})
DEFAULT_ABS_TOL = 0.0
DEFAULT_REL_TOL = 0.05
DEFAULT_SOURCE = "default, set me"
_ENTRY_KEYS = ("value", "abs_tol", "rel_tol", "higher_is_better", "tolerance_source")


@dataclass(frozen=True)
class Check:
    """One metric's verdict. baseline/observed/tolerance are None where they do not exist (missing, new)."""

    key: str
    baseline: float | None
    observed: float | None
    tolerance: float | None
    status: str
    detail: str = ""


def baseline_path(tier: str, experiment: str, root: str | Path = REPO_ROOT) -> Path:
    return Path(root) / "reports" / "baselines" / tier / f"{experiment}.json"


def _check_entry(key: str, entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: metric {key!r} must be an object with {list(_ENTRY_KEYS)}")
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        raise InputError(f"{where}: metric {key!r} lacks {missing}")
    for name in ("value", "abs_tol", "rel_tol"):
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{where}: metric {key!r} {name} must be a finite number, got {value!r}")
    if entry["abs_tol"] < 0 or entry["rel_tol"] < 0:
        raise InputError(f"{where}: metric {key!r} has a negative tolerance")
    if not isinstance(entry["higher_is_better"], bool):
        raise InputError(f"{where}: metric {key!r} higher_is_better must be true or false")


def validate_baseline(baseline: Any, where: str = "baseline") -> dict[str, Any]:
    """Schema check; errors name the file (`where`) and the metric key."""
    if not isinstance(baseline, dict):
        raise InputError(f"{where}: must be a JSON object")
    missing = [k for k in ("experiment", "version", "metrics") if k not in baseline]
    if missing or not isinstance(baseline.get("metrics"), dict):
        raise InputError(f"{where}: needs 'experiment', 'version' and a 'metrics' object (missing {missing})")
    for key, entry in baseline["metrics"].items():
        _check_entry(key, entry, where)
    return baseline


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    return validate_baseline(data, str(path))


def save_baseline(path: str | Path, baseline: dict[str, Any]) -> Path:
    return atomic_write_json(path, validate_baseline(baseline, str(path)))


def tolerance(entry: dict[str, Any]) -> float:
    """max(abs_tol, rel_tol * |value|): abs_tol guards values near 0, rel_tol scales with the value."""
    return max(float(entry["abs_tol"]), float(entry["rel_tol"]) * abs(float(entry["value"])))


def _check_metric(key: str, entry: dict[str, Any], observed: Any) -> Check:
    value, tol = float(entry["value"]), tolerance(entry)
    if observed is None:
        return Check(key, value, None, tol, "missing", "not in the run's metrics")
    observed = float(observed)
    if not math.isfinite(observed):
        return Check(key, value, observed, tol, "regressed", "observed value is not finite")
    delta = observed - value
    # The slack lets a move of exactly the stated tolerance pass despite rounding (0.92 - 0.9 > 0.02).
    if abs(delta) <= tol + 1e-12 * max(1.0, abs(value)):
        return Check(key, value, observed, tol, "ok")
    better = (delta > 0) == entry["higher_is_better"]
    return Check(key, value, observed, tol, "improved" if better else "regressed", f"delta {delta:+.4g}")


def compare(
    record_metrics: dict[str, float],
    record_version: str | int,
    baseline: dict[str, Any],
    record_experiment: str | None = None,
) -> list[Check]:
    """Check each baseline metric against the run; run-only metrics come back as "new" (never failing).

    A version mismatch yields a single "version-mismatch" check: numbers from another experiment version
    measure something else, so comparing them metric by metric would only mislead.
    """
    validate_baseline(baseline)
    if record_experiment is not None and record_experiment != baseline["experiment"]:
        raise InputError(f"run is {record_experiment!r} but the baseline is for {baseline['experiment']!r}")
    if str(record_version) != str(baseline["version"]):
        detail = f"baseline version {baseline['version']}, run version {record_version}"
        return [Check("version", None, None, None, "version-mismatch", detail)]
    checks = [_check_metric(k, e, record_metrics.get(k)) for k, e in baseline["metrics"].items()]
    for key in record_metrics:
        if key not in baseline["metrics"]:
            checks.append(Check(key, None, float(record_metrics[key]), None, "new", "not in the baseline"))
    return checks


def gate(checks: list[Check], strict: bool = False) -> int:
    """Exit code: 1 on regressed/missing/version-mismatch (and on improved when strict), else 0.

    strict exists because an unexplained improvement is also a moved finding: the baseline should be
    updated on purpose, not drift.
    """
    failing = FAILING | {"improved"} if strict else FAILING
    return 1 if any(c.status in failing for c in checks) else 0


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def format_table(checks: list[Check]) -> str:
    """Plain-text table, one row per check, then a count per status."""
    header = ("status", "metric", "baseline", "observed", "tolerance", "detail")
    rows = [
        (c.status, c.key, _num(c.baseline), _num(c.observed), _num(c.tolerance), c.detail) for c in checks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = [
        f"{sum(c.status == s for c in checks)} {s}" for s in STATUSES if any(c.status == s for c in checks)
    ]
    return "\n".join(lines) + "\n" + (", ".join(counts) or "no checks") + "\n"


def update_baseline(
    baseline: dict[str, Any],
    record_metrics: dict[str, float],
    record_version: str | int,
    higher_is_better: dict[str, bool] | None = None,
    drop_missing: bool = False,
) -> dict[str, Any]:
    """A new baseline taking the run's values and version; tolerances and their sources are kept.

    Metrics new to the baseline get a default tolerance flagged "default, set me" and need a
    higher_is_better entry. Baseline metrics absent from the run are kept unless drop_missing, because a
    metric that vanished is more often a bug than a decision.
    """
    base = copy.deepcopy(validate_baseline(baseline))
    metrics = base.pop("metrics")
    for key, value in record_metrics.items():
        if not math.isfinite(float(value)):
            raise InputError(f"metric {key!r} is not finite ({value}); refusing to make it a baseline")
        if key not in metrics:
            if higher_is_better is None or key not in higher_is_better:
                raise InputError(f"new metric {key!r} needs a higher_is_better entry")
            metrics[key] = {
                "abs_tol": DEFAULT_ABS_TOL,
                "rel_tol": DEFAULT_REL_TOL,
                "higher_is_better": bool(higher_is_better[key]),
                "tolerance_source": DEFAULT_SOURCE,
            }
        metrics[key]["value"] = float(value)
    if drop_missing:
        metrics = {k: e for k, e in metrics.items() if k in record_metrics}
    # Fixed key order so baseline diffs in review show only the numbers that moved.
    ordered = {
        k: {f: e[f] for f in _ENTRY_KEYS} | {f: v for f, v in e.items() if f not in _ENTRY_KEYS}
        for k, e in metrics.items()
    }
    out = {"experiment": base.pop("experiment"), "version": str(record_version)}
    base.pop("version")
    return validate_baseline(out | {"metrics": ordered} | base)


def _load_record(path: Path) -> ResultRecord | None:
    if path.is_dir():
        return read_run(path)
    if path.name == "metrics.json" and path.is_file():
        return read_run(path.parent)
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI: compare a run with its baseline, print the table, return the gate's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m anima_probe.pipeline.baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", type=Path, help="run folder or its metrics.json")
    parser.add_argument("--tier", default="toy", help="baseline tier folder under reports/baselines/")
    parser.add_argument("--baseline", type=Path, help="explicit baseline file (overrides --tier)")
    parser.add_argument("--strict", action="store_true", help="fail on improvements too")
    parser.add_argument("--update", action="store_true", help="accept this run as the new baseline")
    args = parser.parse_args(argv)
    record = _load_record(args.run)
    if record is None:
        parser.error(f"{args.run} is neither a run folder nor a metrics.json")
    path = args.baseline or baseline_path(args.tier, record.experiment)
    if args.update:
        base = load_baseline(path) if path.exists() else {"experiment": record.experiment, "metrics": {}}
        base.setdefault("version", record.version)
        save_baseline(path, update_baseline(base, record.metrics, record.version, record.higher_is_better))
        print(f"updated {path}")
        return 0
    if not path.exists():
        print(f"no baseline at {path}; create one with --update", file=sys.stderr)
        return 1
    checks = compare(record.metrics, record.version, load_baseline(path), record.experiment)
    print(format_table(checks), end="")
    return gate(checks, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
