"""Benchmark: `make reports` from a cold cache, wall time against issue 12's 8-minute budget on a 2-core CPU.

Runs the main job's command (`anima-probe report`, default `--jobs`) in a fresh process with empty results, cache
and reports folders (a clone's first run: every experiment stale, no embedding or statistics cache), and times it:
wall, the CPU seconds of the command and all its worker processes, and each experiment's own line of the log.

Run on a quiet machine (nothing else running): .venv/bin/python benchmarks/reports_cold.py
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from anima_probe.pipeline import benchmark_records as rec

COMMAND = ".venv/bin/python benchmarks/reports_cold.py"
BUDGET_S = 8 * 60  # issue 12: make reports within 8 minutes of wall time from a cold cache
DONE = re.compile(r"^(?P<name>[\w-]+): done in (?P<wall>\d+) s \((?P<cpu>\d+) CPU-s")


def cold_report(results: Path, reports: Path, cache: Path, jobs: int | None) -> dict:
    """Wall and CPU seconds of one cold `anima-probe report` (runs into `results`, reports into `reports`, an empty
    `cache`), and its per-experiment log lines."""
    env = os.environ | {"ANIMA_PROBE_RESULTS": str(results), "ANIMA_PROBE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "anima_probe.cli", "report", "--quiet", "--reports", str(reports)]
    argv += [] if jobs is None else ["--jobs", str(jobs)]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [m.groupdict() for line in out.splitlines() if (m := DONE.match(line.strip()))]
    if not lines:  # the log's format changed (anima_probe.pipeline.experiment.ensure_fresh): say so, not an empty table
        raise SystemExit(f"no '<experiment>: done in N s (M CPU-s ...)' lines in the report's log:\n{out}")
    return {"wall": wall, "cpu": cpu, "experiments": lines, "log": out}


def to_record(run: dict, jobs: int | None, machine: dict, **provenance) -> rec.BenchmarkRecord:
    whole = rec.Table("Cold `anima-probe report` (every experiment, notebooks, reports; empty caches)",
                      ["--jobs", "wall", "CPU (command + workers)", "CPU / wall", f"wall / {BUDGET_S // 60} min"],
                      ["{}", "{:.0f} s", "{:.0f} s", "{:.2f}", "{:.2f}"],
                      [[str(jobs or f"default ({os.cpu_count()})"), run["wall"], run["cpu"], run["cpu"] / run["wall"],
                        run["wall"] / BUDGET_S]])
    per = rec.Table("Each experiment in its worker process (from the command's log)",
                    ["experiment", "wall", "CPU in its process"], ["{}", "{} s", "{} s"],
                    [[e["name"], int(e["wall"]), int(e["cpu"])] for e in run["experiments"]])
    experiments_cpu = sum(int(e["cpu"]) for e in run["experiments"])
    notes = [f"The experiments' own CPU adds to {experiments_cpu} s; the rest of the command's CPU is loading the "
             "model once per worker, the notebooks (papermill, one kernel each) and writing the reports.",
             "Cold: results, the embedding cache and the statistics cache are fresh empty folders, as on a new clone "
             "(the Python bytecode and the page cache are not cleared)."]
    ratios = [rec.Ratio(f"cold make reports: wall / {BUDGET_S // 60}-minute budget", run["wall"] / BUDGET_S, 1.0)]
    return rec.BenchmarkRecord("reports-cold", "make reports from a cold cache", COMMAND, machine, [whole, per],
                               ratios, notes, **provenance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=None, help="passed to `anima-probe report` (default: its own)")
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    ap.add_argument("--results", default=None, help="where the runs go (absent or empty: the run must be cold; "
                    "default: a temporary folder). --results results --reports reports also regenerates the reports")
    ap.add_argument("--reports", default=None, help="where the reports go (default: a temporary folder)")
    args = ap.parse_args()
    if args.results and Path(args.results).exists() and any(Path(args.results).iterdir()):
        raise SystemExit(f"--results {args.results}: not empty, so the run would not be cold; move it away first")
    machine = rec.machine_info(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d)
        run = cold_report(Path(args.results or scratch / "results"), Path(args.reports or scratch / "reports"),
                          scratch / "cache", args.jobs)
    record = to_record(run, args.jobs, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
