"""Benchmark: loading a full-size synthetic Anima DiT file (peak RSS / file size) and DiT forward fp32 vs bf16 on CPU.

Run: .venv/bin/python benchmarks/loading.py  (writes reports/benchmarks/loading.json; ratios are measured in one run)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.timing import repeat, timed

COMMAND = ".venv/bin/python benchmarks/loading.py"
PEAK_GOAL = 1.3  # peak RSS of the loading process / file size
SCAN_GOAL = 1.10  # issue 16: refusing NaN / inf weights adds at most 10 % to loading


def _child_load(path: str, scan: bool) -> None:
    """Load the file once, with or without the non-finite scan (turned off here only, to measure what it costs)."""
    from anima_probe.model import files
    from anima_probe.model.anima import load_dit_file

    if not scan:
        files.all_finite = lambda t: True
    took, _ = timed(lambda: load_dit_file(Path(path), dtype=torch.bfloat16))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"seconds": took.wall, "peak_rss": peak}))


def _child(path: Path, scan: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(int(scan))], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _load_in_children(path: Path, pairs: int = 3) -> dict:
    """`pairs` loads with the scan and without, each in a fresh process (peak RSS is per process), the two
    orders alternating; the scan's cost is the median of the paired ratios."""
    with_scan, ratios = [], []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = _child(path, True), _child(path, False)
        else:
            b, a = _child(path, False), _child(path, True)
        with_scan.append(a)
        ratios.append(a["seconds"] / b["seconds"])
    return {"seconds": statistics.median(r["seconds"] for r in with_scan),
            "peak_rss": statistics.median(r["peak_rss"] for r in with_scan), "scan_ratio": statistics.median(ratios)}


def write_full_size(path: Path) -> int:
    from anima_probe.model.dit_file import (
        ADAPTER_PREFIX,
        ANIMA_ADAPTER,
        ANIMA_DIT,
        adapter_layout,
        dit_layout,
    )
    from anima_probe.model.tiny import write_dit_file

    state = {k: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02) for k, s in dit_layout(ANIMA_DIT).items()}
    state.update({ADAPTER_PREFIX + k: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02)
                  for k, s in adapter_layout(ANIMA_ADAPTER).items()})
    write_dit_file(path, state, "model.diffusion_model.")
    return path.stat().st_size


def forward_times(c, tokens_side: int, reps: int = 3) -> dict[str, float]:
    """dtype -> mean wall seconds of one batch-1 forward, after a warm-up."""
    from anima_probe.model.anima import build_transformer, dit_velocity

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        tr = build_transformer(c, meta=False).to(dtype).eval()
        x, ctx = torch.randn(1, c.in_channels, tokens_side, tokens_side), torch.randn(1, 512, c.text_dim)
        with torch.no_grad():
            times = repeat(lambda: dit_velocity(tr, x, torch.tensor([0.5]), ctx), reps)  # noqa: B023 (used at once)
        out[str(dtype).split(".")[1]] = statistics.mean(t.wall for t in times)
    return out


def to_record(size: int, load: dict, forwards: dict[str, tuple[int, dict]], machine: dict,
              **provenance) -> rec.BenchmarkRecord:
    """`load` = the child's {"seconds", "peak_rss"}; `forwards` = config name -> (tokens, `forward_times`)."""
    peak = load["peak_rss"] / size
    loading = rec.Table("Loading a full-size synthetic Anima DiT file (bf16, 685 keys, `model.diffusion_model.` prefix)",
                    ["file size", "load time", "peak RSS of the loading process",
                     f"peak / file size (goal <= {PEAK_GOAL:g})"], ["{:.2f} GB", "{:.1f} s", "{:.2f} GB", "{:.2f}"],
                    [[size / 1e9, load["seconds"], load["peak_rss"] / 1e9, peak]])
    forward = rec.Table("DiT forward on CPU, batch 1, fp32 vs bf16 (mean of 3 after a warm-up)",
                    ["config", "tokens", "fp32", "bf16", "bf16 / fp32"], ["{}", "{}", "{:.1f} ms", "{:.1f} ms",
                                                                          "{:.2f}x"],
                    [[name, n, t["float32"] * 1e3, t["bfloat16"] * 1e3, t["bfloat16"] / t["float32"]]
                     for name, (n, t) in forwards.items()])
    ratios = [rec.Ratio("peak RSS of loading / file size", peak, PEAK_GOAL),
              rec.Ratio("load time with the non-finite scan / without it", load["scan_ratio"], SCAN_GOAL)]
    ratios += [rec.Ratio(f"{name}: bf16 / fp32 forward time", t["bfloat16"] / t["float32"])
               for name, (_, t) in forwards.items()]
    notes = ["The file is read just after it was written, so it is in the page cache: the load time excludes disk "
             "reads. Tensors are read one at a time into a meta-built model (`assign=True`): no second copy is held.",
             "Every load scans each tensor for NaN / inf (one sum per tensor). Its cost: loads with and without the "
             "scan, each in a fresh process, 3 pairs in alternating order, median of the paired ratios; the load "
             "figures above are the medians of the loads with the scan."]
    return rec.BenchmarkRecord("loading", "Loading the DiT file and the DiT forward in fp32 vs bf16", COMMAND, machine,
                           [loading, forward], ratios, notes, **provenance)


def main() -> None:
    from anima_probe.model.dit_file import ANIMA_DIT
    from anima_probe.model.tiny import TINY_DIT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    machine = rec.machine_info(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "anima-full-synthetic.safetensors"
        size = write_full_size(path)
        load = _load_in_children(path)
    full2 = replace(ANIMA_DIT, num_blocks=2)
    forwards = {"tiny twin (64 wide, 2 blocks)": (64, forward_times(TINY_DIT, 16)),
                "full width (2048, 16 heads), 2 blocks": (256, forward_times(full2, 32))}
    record = to_record(size, load, forwards, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_load(sys.argv[2], scan=sys.argv[3] == "1")
    else:
        main()
