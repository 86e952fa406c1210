"""Benchmark: what one toy DiT call costs the CPU, and the three things that set it.

1. **Folded padding** (``model.anima.fold_padding``): the DiT reads 512 text rows, of which all but ~12 are the same
   zero padding; folded, it attends to the real rows plus one weighted row. Paired CPU ratio folded / all 512 rows.
2. **Rows per call** (``guidance.guided.CPU_ROWS_PER_CALL``): CPU for 256 image rows in calls of 8..256 rows, as
   a ratio to calls of that many.
3. **The allocator** (``pipeline.parallel.ALLOCATOR_TUNABLES``): a fresh process running DiT calls with glibc's
   default mmap / trim thresholds against one started with the raised ones; CPU (user + system) of the child.

Each comparison is interleaved (a fresh random order every repetition) and read as the median of paired ratios, so
drift in the shared machine's load hits every condition alike. One torch thread: CPU time then counts work, not
OpenMP spin-waits. Tables 1 and 2 run under the raised allocator thresholds, as `anima-probe report`'s workers do
(the script restarts itself with them).

Run: .venv/bin/python benchmarks/dit_call.py   (writes reports/benchmarks/dit-call.json)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys

import torch

from anima_probe.guidance.guided import CPU_ROWS_PER_CALL
from anima_probe.model.anima import dit_velocity, load_anima
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.parallel import ALLOCATOR_TUNABLES
from anima_probe.pipeline.timing import interleaved, paired

COMMAND = ".venv/bin/python benchmarks/dit_call.py"
PROMPTS = ["1girl, solo, smile, long hair, masterpiece", "scenery, landscape, no humans, worst quality"]
ROWS = (8, 16, 32, 64, 256)
TOTAL = 256  # image rows per condition


def _inputs(anima, rows: int):
    g = torch.Generator().manual_seed(0)
    ctx = encode_prompts(anima, PROMPTS).crossattn_emb.repeat(rows // 2, 1, 1)  # (rows, 512, Dt)
    return torch.randn(rows, 3, 32, 32, generator=g), torch.full((rows,), 0.5), ctx


@torch.no_grad()
def fold(anima, reps: int) -> dict:
    x, s, ctx = _inputs(anima, 32)
    times = interleaved({"all 512 rows": lambda: dit_velocity(anima.transformer, x, s, ctx, fold=False),
                         "folded": lambda: dit_velocity(anima.transformer, x, s, ctx)}, reps)
    return paired(times, "all 512 rows")


@torch.no_grad()
def rows_per_call(anima, reps: int) -> dict:
    """Each condition runs TOTAL image rows in calls of its size."""
    inputs = {n: _inputs(anima, n) for n in ROWS}

    def run(n):
        x, s, ctx = inputs[n]
        return lambda: [anima.velocity(x, s, ctx) for _ in range(TOTAL // n)]

    return paired(interleaved({f"{n} rows": run(n) for n in ROWS}, reps), f"{CPU_ROWS_PER_CALL} rows")


CHILD = """
import resource, torch
torch.set_num_threads(1)
from anima_probe.model.anima import load_anima
from anima_probe.model.text import encode_prompts
a = load_anima(with_vae=False)
ctx = encode_prompts(a, {prompts!r}).crossattn_emb.repeat(32, 1, 1)
x, s = torch.randn(64, 3, 32, 32), torch.full((64,), 0.5)
with torch.no_grad():
    a.velocity(x, s, ctx)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range({calls}):
        a.velocity(x, s, ctx)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)
"""


def allocator(reps: int, calls: int) -> dict:
    """user / system CPU of a child's `calls` 64-row DiT calls, default allocator vs raised thresholds."""
    code = CHILD.format(prompts=PROMPTS, calls=calls)
    base_env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    envs = {"glibc defaults": base_env, "raised thresholds": base_env | {"GLIBC_TUNABLES": ALLOCATOR_TUNABLES}}
    out = {name: [] for name in envs}
    order, rng = list(envs), random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            res = subprocess.run([sys.executable, "-c", code], env=envs[name], check=True, capture_output=True,
                                 text=True)
            out[name].append(tuple(float(v) for v in res.stdout.split()[-2:]))
    ref = out["glibc defaults"]
    return {name: {"user_s": statistics.median(u for u, _ in ts), "sys_s": statistics.median(s for _, s in ts),
                   "cpu_ratio": statistics.median((u + s) / (bu + bs) for (u, s), (bu, bs) in zip(ts, ref))}
            for name, ts in out.items()}


def to_record(folded: dict, per_call: dict, alloc: dict, calls: int, reps: int, machine: dict,
              **provenance) -> rec.BenchmarkRecord:
    tables = [
        rec.Table(f"Folded padding: one call of 32 rows, {reps} repetitions", ["condition", "median CPU",
                  "CPU ratio to 512 rows"], ["{}", "{:.3f} s", "**{:.3f}x**"],
                  [[k, v["cpu_s"], v["cpu_ratio"]] for k, v in folded.items()]),
        rec.Table(f"{TOTAL} image rows in calls of n rows, {reps} repetitions", ["rows per call", "median CPU",
                  f"CPU ratio to {CPU_ROWS_PER_CALL} rows"], ["{}", "{:.3f} s", "**{:.3f}x**"],
                  [[k, v["cpu_s"], v["cpu_ratio"]] for k, v in per_call.items()]),
        rec.Table(f"A fresh process, {calls} calls of 64 rows, {max(1, reps // 2)} repetitions", ["allocator",
                  "median user CPU", "median system CPU", "(user + system) ratio to defaults"],
                  ["{}", "{:.2f} s", "{:.2f} s", "**{:.3f}x**"],
                  [[k, v["user_s"], v["sys_s"], v["cpu_ratio"]] for k, v in alloc.items()]),
    ]
    ratios = [rec.Ratio("folded / all 512 text rows, CPU", folded["folded"]["cpu_ratio"], 1.0),
              rec.Ratio(f"{TOTAL} rows in one call / in calls of {CPU_ROWS_PER_CALL}, CPU",
                        per_call[f"{TOTAL} rows"]["cpu_ratio"]),
              rec.Ratio("raised allocator thresholds / glibc defaults, CPU", alloc["raised thresholds"]["cpu_ratio"],
                        1.0)]
    notes = ["Toy model (128 wide, 5 blocks, 256 image tokens, ~12 real text rows of 512), fp32, 1 torch thread. "
             "The sampler batches cells up to `CPU_ROWS_PER_CALL` rows per DiT call on a CPU; `anima-probe report` "
             "starts its workers with the raised thresholds."]
    return rec.BenchmarkRecord("dit-call", "What one toy DiT call costs the CPU: folded padding, rows per call, the "
                               "allocator", COMMAND, machine, tables, ratios, notes, **provenance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=24, help="DiT calls per child process (the allocator table)")
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    if "GLIBC_TUNABLES" not in os.environ:  # measure the calls as the report's workers make them
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | {"GLIBC_TUNABLES": ALLOCATOR_TUNABLES})
    torch.set_num_threads(1)
    machine = rec.machine_info(1, "shared with other jobs; fp32")
    anima = load_anima(with_vae=False)
    record = to_record(fold(anima, args.reps), rows_per_call(anima, args.reps),
                       allocator(max(1, args.reps // 2), args.calls), args.calls, args.reps, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
