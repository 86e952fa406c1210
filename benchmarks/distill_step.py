"""Benchmark: one modulation-source distillation step vs one DiT forward at the same batch.

A step is a teacher forward (no grad), a student forward with the injected modulation, its backward (through the
frozen DiT to the source) and an AdamW update of the source. The target is <= 4.5x one forward. The floor is lower
than the usual 1 + 1 + 2: the DiT is frozen, so its backward computes activation gradients only (no weight
gradients), about one forward's work, giving ~3x. Gradient checkpointing on the frozen blocks adds the blocks'
recompute in exchange for not holding every block's activations.

Run: .venv/bin/python benchmarks/distill_step.py  (CPU, 1 thread; writes reports/benchmarks/distill-step.json)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from anima_probe.model.anima import Anima, build_transformer, load_anima
from anima_probe.model.dit_file import DiTConfig
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.timing import repeat
from anima_probe.training.data import DistillData
from anima_probe.training.distill import (
    DistillConfig,
    Student,
    batch,
    checkpointed_blocks,
    distill_loss,
    new_source,
)

COMMAND = ".venv/bin/python benchmarks/distill_step.py"
TARGET = 4.5  # a step may cost at most 4.5 forwards
WIDER = DiTConfig(hidden=512, num_blocks=8, head_dim=64, mlp_hidden=2048, text_dim=256, adaln_lora_dim=128,
                  in_channels=16, out_channels=16, patch=2)


def random_data(c: DiTConfig, side: int, n: int = 64, text_rows: int = 32) -> DistillData:
    g = torch.Generator().manual_seed(0)
    return DistillData([f"caption {i}" for i in range(n)], torch.randn(n, c.in_channels, side, side, generator=g),
                       torch.randn(n, text_rows, c.text_dim, generator=g), torch.randn(1, text_rows, c.text_dim,
                                                                                       generator=g),
                       torch.randn(n, c.text_dim, generator=g), n - 8)


def wider_model() -> Anima:
    torch.manual_seed(0)
    tr = build_transformer(WIDER, meta=False).eval().requires_grad_(False)
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0, 0.02)
    return Anima(transformer=tr, adapter=None, dit_config=WIDER, name="wider-random")


def _median(fn, reps: int) -> float:
    """Median wall seconds of `reps` calls after a warm-up."""
    return statistics.median(t.wall for t in repeat(fn, reps))


def step_runner(anima, data: DistillData, batch_size: int, device="cpu"):
    """(runner, batch parts): ``runner(checkpointing)`` is one step of ``distill``'s inner loop (teacher forward,
    student forward, backward to the source, AdamW), ready to time; benchmarks/gpu.py times the same step."""
    cfg = DistillConfig(batch_size=batch_size)
    source = new_source(cfg, anima, data.pooled.shape[1]).to(device).float()
    torch.nn.init.normal_(source.linear_out.weight, std=0.01)  # non-zero, so the backward reaches every weight
    student, opt = Student(source, anima.num_blocks), torch.optim.AdamW(source.parameters(), lr=1e-4)
    parts = batch(cfg, data, 0, 0, 1, device)

    def runner(checkpointing: bool):
        def one():
            opt.zero_grad(set_to_none=True)
            with checkpointed_blocks(anima, checkpointing):
                distill_loss(anima, student, data, *parts, backward=torch.Tensor.backward)
            opt.step()
        return one

    return runner, parts


def measure(anima, data: DistillData, batch_size: int, reps: int) -> dict:
    step, parts = step_runner(anima, data, batch_size)
    x_t, sigma = data.x0[parts[0]], parts[1]

    def forward():
        with torch.no_grad():
            anima.velocity(x_t, sigma, data.context(parts[0]))

    f = _median(forward, reps)
    return {"forward": f, "step": _median(step(False), reps), "step_ckpt": _median(step(True), reps)}


def to_record(results: dict[str, tuple[int, dict]], machine: dict, reps: int, **provenance) -> rec.BenchmarkRecord:
    """`results` = model name -> (batch, `measure`'s {"forward", "step", "step_ckpt"} seconds)."""
    rows = [[name, bs, r["forward"] * 1e3, r["step"] * 1e3, r["step"] / r["forward"], r["step_ckpt"] / r["forward"]]
            for name, (bs, r) in results.items()]
    table = rec.Table("Distillation step vs DiT forward",
                  ["model", "batch", "forward (ms)", "step (ms)", "step / forward", "with gradient checkpointing"],
                  ["{}", "{}", "{:.0f}", "{:.0f}", "**{:.2f}x**", "{:.2f}x"], rows,
                  f"Median of {reps} after a warm-up; both columns of a row measured in the same run. A step = "
                  "teacher forward (no grad) + student forward with the injected modulation + backward through the "
                  f"frozen DiT to the source + AdamW on the source. Target <= {TARGET:g}x. Floor ~3x: the frozen "
                  "DiT's backward needs activation gradients only (no weight gradients), about one forward. "
                  "Gradient checkpointing (`gradient_checkpointing=true`) adds the blocks' recompute, about one "
                  "forward.")
    ratios = []
    for name, (_, r) in results.items():
        ratios += [rec.Ratio(f"{name}: step / forward", r["step"] / r["forward"], TARGET),
                   rec.Ratio(f"{name}: step with gradient checkpointing / forward", r["step_ckpt"] / r["forward"])]
    return rec.BenchmarkRecord("distill-step", "Distillation step vs DiT forward", COMMAND, machine, [table], ratios,
                           **provenance)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared CPU: thread hand-offs dominate these small matmuls otherwise
    machine = rec.machine_info(1, "shared with other jobs; fp32")
    results = {}
    toy = load_anima(with_text=False)
    for name, anima, side, bs in (("toy world (128 wide, 5 blocks, 256 tokens)", toy, 32, 8),
                                  ("wider random (512 wide, 8 blocks, 256 tokens)", wider_model(), 32, 8)):
        results[name] = (bs, measure(anima, random_data(anima.dit_config, side), bs, reps=args.reps))
        print(name, results[name], flush=True)
    record = to_record(results, machine, args.reps)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
