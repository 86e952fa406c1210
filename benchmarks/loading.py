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


def _child_load(path: str) -> None:
    from anima_probe.model.anima import load_dit_file

    took, _ = timed(lambda: load_dit_file(Path(path), dtype=torch.bfloat16))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"seconds": took.wall, "peak_rss": peak}))


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
    ratios = [rec.Ratio("peak RSS of loading / file size", peak, PEAK_GOAL)]
    ratios += [rec.Ratio(f"{name}: bf16 / fp32 forward time", t["bfloat16"] / t["float32"])
               for name, (_, t) in forwards.items()]
    notes = ["The file is read just after it was written, so it is in the page cache: the load time excludes disk "
             "reads. Tensors are read one at a time into a meta-built model (`assign=True`): no second copy is held."]
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
        load = json.loads(subprocess.run([sys.executable, __file__, "--child", str(path)], check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
    full2 = replace(ANIMA_DIT, num_blocks=2)
    forwards = {"tiny twin (64 wide, 2 blocks)": (64, forward_times(TINY_DIT, 16)),
                "full width (2048, 16 heads), 2 blocks": (256, forward_times(full2, 32))}
    record = to_record(size, load, forwards, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_load(sys.argv[2])
    else:
        main()
