"""Benchmark: what does the full-size Anima cost on one GPU, and does modulation guidance add to it?

Builds the released architecture (`ANIMA_DIT` + `ANIMA_ADAPTER`, docs/anima.md "Architecture and dimensions") with
random weights in bf16 -- speed does not depend on the weight values, so nothing is downloaded -- at 1024x1024
(latent 128x128: 4,096 image tokens, 512 text rows). Every DiT call runs on 2 rows, the [cond; uncond] pair of one
CFG step. It measures, in one run:

- one forward: median time, and its share of the GPU's dense bf16 peak. FLOPs are counted analytically
  (`forward_flops`: every matmul at 2 FLOPs per multiply-add; norms, activations and RoPE are not counted); a unit
  test checks the formula against torch's FlopCounterMode on a tiny config;
- guided vs unguided sampling: whole `sample_guided` runs, Euler, same steps, same CFG, same noise; guided = a
  pooled_text_proj source at w=3 on every block. Conditions are interleaved; the ratio is the median paired ratio;
- one distillation step (`training.distill.distill_loss` + backward + AdamW), without and with gradient
  checkpointing, vs the forward;
- peak memory of each phase (`torch.cuda.max_memory_allocated`).

Targets (issue 13): forward >= 40 % of the dense bf16 peak; guided / unguided <= 1.03x; the whole command < 8 min.

Run:  .venv/bin/python benchmarks/gpu.py                                (CUDA; writes reports/benchmarks/gpu.json)
      .venv/bin/python benchmarks/gpu.py --device cpu --tiny --records DIR (smoke mode: a tiny config, seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.families import POOLED_TEXT_PROJ, guidance_delta
from anima_probe.guidance.guided import Guidance, GuidedPrompts, sample_guided
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.sources import PooledTextProjection
from anima_probe.model.anima import CROSSATTN_TOKENS, Anima, build_adapter, build_transformer
from anima_probe.model.dit_file import ANIMA_ADAPTER, ANIMA_DIT, AdapterConfig, DiTConfig
from anima_probe.model.text import PromptTokens, crossattn
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.provenance import environment_info, git_hash, utc_now
from anima_probe.pipeline.timing import interleaved, paired, repeat
from anima_probe.probes.pooling import pool_named
from anima_probe.training.data import DistillData

COMMAND = ".venv/bin/python benchmarks/gpu.py"
CFG, W, TEXT_TOKENS = 4.0, 3.0, 48  # CFG scale, guidance weight, real T5/Qwen tokens per random "prompt"
# Dense bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (Hopper sheets quote 2:4 sparsity; dense is half);
# most specific name first. Anything else: --peak-tflops.
PEAK_BF16_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5),
                    ("H100", 989.5), ("A100", 312.0), ("L40S", 362.0))
TARGETS = {"forward_share_of_peak": 0.40, "guided_over_unguided": 1.03, "total_seconds": 480.0}


@dataclass(frozen=True)
class Setup:
    dit: DiTConfig
    adapter: AdapterConfig
    latent: int  # latent side (image side / 8)
    rows: int = 2  # rows per DiT call: [cond; uncond]
    steps: int = 20  # Euler steps per sample
    reps: int = 10  # timed forwards / distillation steps (median)
    sample_reps: int = 5  # interleaved timed samples per condition


FULL = Setup(ANIMA_DIT, ANIMA_ADAPTER, latent=128)
TINY = Setup(DiTConfig(hidden=64, num_blocks=2, head_dim=32, mlp_hidden=256, text_dim=48, adaln_lora_dim=16,
                       in_channels=16, out_channels=16, patch=2),
             AdapterConfig(source_dim=32, model_dim=48, num_layers=1, head_dim=16, mlp_hidden=96, vocab=64),
             latent=16, steps=2, reps=2, sample_reps=2)


def forward_flops(c: DiTConfig, rows: int, h: int, w: int, text_rows: int = CROSSATTN_TOKENS) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one DiT forward on ``rows`` latents of h x w, by part, and the total.

    N image tokens, L text rows, width D, MLP M, AdaLN-LoRA rank r. Per block: self-attention q, k, v, out and
    cross-attention q, out (6 N D^2 multiply-adds), cross-attention k, v from the text (2 L Dt D), scores and values
    (N^2 D self, N L D cross, twice each), the MLP (2 N D M), and three AdaLN heads D -> r -> 3D once per row (the
    timestep embedding is one vector per image). Outside the blocks: the patch embedding, the timestep MLP
    D -> D -> 3D, the final AdaLN head D -> r -> 2D and the output projection.
    """
    D, M, r, Dt, L = c.hidden, c.mlp_hidden, c.adaln_lora_dim, c.text_dim, text_rows
    N = (h // c.patch) * (w // c.patch)
    block = {
        "projections": 2 * (6 * N * D * D + 2 * L * Dt * D),
        "attention": 2 * (2 * N * N * D + 2 * N * L * D),
        "mlp": 2 * 2 * N * D * M,
        "adaln": 2 * 3 * (D * r + r * 3 * D),
    }
    parts = {k: rows * c.num_blocks * v for k, v in block.items()}
    patch_in = (c.in_channels + 1) * c.patch**2  # +1: the all-zero padding-mask channel
    parts["embeddings"] = rows * 2 * (N * patch_in * D + D * D + D * 3 * D)
    parts["final_layer"] = rows * 2 * (D * r + r * 2 * D + N * D * c.patch**2 * c.out_channels)
    return {**parts, "total": sum(parts.values())}


def peak_tflops(device_name: str) -> float | None:
    return next((t for key, t in PEAK_BF16_TFLOPS if key in device_name), None)


def build(s: Setup, device: torch.device, dtype: torch.dtype) -> Anima:
    """DiT + adapter with their default random initialisation, created in ``dtype`` on ``device`` (2B weights
    never pass through host memory or fp32)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            tr, ad = build_transformer(s.dit, meta=False), build_adapter(s.adapter, meta=False)
    finally:
        torch.set_default_dtype(previous)
    frozen = [m.eval().requires_grad_(False) for m in (tr, ad)]
    return Anima(transformer=frozen[0], adapter=frozen[1], dit_config=s.dit, name="anima-random")


@torch.no_grad()
def conditioning(anima: Anima, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``crossattn_emb`` (n, 512, Dt) and its T5 mask (n, 512) of n random "prompts" through the adapter."""
    g, dev, a = torch.Generator().manual_seed(seed), anima.device, anima.adapter.config
    hidden = torch.randn(n, TEXT_TOKENS, a.source_dim, generator=g).to(dev, anima.dtype)  # (n, Lq, Dq)
    ones = torch.ones(n, TEXT_TOKENS, dtype=torch.bool, device=dev)
    ids = torch.randint(2, a.target_vocab_size, (n, TEXT_TOKENS), generator=g).to(dev)  # (n, Lt)
    ctx = crossattn(anima.adapter, hidden, PromptTokens(ids, ones, ones, ids, ones))  # (n, 512, Dt)
    mask = torch.nn.functional.pad(ones, (0, CROSSATTN_TOKENS - TEXT_TOKENS))  # (n, 512)
    return ctx, mask


@torch.no_grad()
def guided_prompts(anima: Anima, ctx: torch.Tensor, mask: torch.Tensor) -> GuidedPrompts:
    """Rows of ``ctx``: prompt, CFG negative, p+, p-; a pooled_text_proj with random non-zero output weights."""
    torch.manual_seed(0)
    proj = PooledTextProjection(anima.dit_config.hidden, anima.dit_config.text_dim).to(anima.device)
    torch.nn.init.normal_(proj.linear_out.weight, std=0.05)  # zero-init would make the guided run add zeros
    pooled = pool_named(ctx, mask, "max_padded")  # (4, Dt)
    base = proj(pooled[:2])  # (2, D): prompt, negative
    delta = guidance_delta(proj, pooled[2:3], pooled[3:4])  # (1, D)
    return GuidedPrompts(POOLED_TEXT_PROJ, ctx[:1], ctx[1:2], base[:1],
                         {CFGRowPolicy.PER_ROW_BASE.value: base[1:2]}, delta, None)


def with_peak(device: torch.device, fn: Callable[[], object]) -> tuple[object, float | None]:
    """``fn()`` and the peak memory torch allocated while it ran, weights included (GiB; None off CUDA)."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    return out, torch.cuda.max_memory_allocated(device) / 2**30


def median_time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall seconds of `reps` calls after a warm-up (kernel selection, allocator growth)."""
    return statistics.median(t.wall for t in repeat(fn, reps, device=device))


def measure_forward(anima: Anima, s: Setup, ctx: torch.Tensor) -> dict:
    x = torch.randn(s.rows, s.dit.in_channels, s.latent, s.latent, device=anima.device)  # (2, 16, h, w)
    sigma = torch.full((s.rows,), 0.5, device=anima.device)

    def forward():
        with torch.no_grad():
            return anima.velocity(x, sigma, ctx)

    return {"seconds": median_time(forward, anima.device, s.reps),
            "finite_output": bool(torch.isfinite(forward()).all())}


def measure_sampling(anima: Anima, s: Setup, gp: GuidedPrompts) -> dict:
    noise = initial_noise(anima, 1, s.latent, seed=0)  # no VAE here: the size is the latent side
    runs = {"unguided": lambda: sample_guided(anima, gp, None, CFG, noise, steps=s.steps),
            "guided": lambda: sample_guided(anima, gp, Guidance(W), CFG, noise, steps=s.steps)}
    out = {f"peak_memory_gib_{k}": with_peak(anima.device, fn)[1] for k, fn in runs.items()}  # and the warm-up
    # interleaved in a random order, so a drift in clocks or load hits both conditions alike
    res = paired(interleaved(runs, s.sample_reps, warmup=0, device=anima.device), "unguided")
    return {**out, "unguided_s": res["unguided"]["wall_s"], "guided_s": res["guided"]["wall_s"],
            "guided_over_unguided": res["guided"]["wall_ratio"]}


def distill_data(anima: Anima, s: Setup) -> DistillData:
    n = 4 * s.rows
    ctx, mask = conditioning(anima, n + 1, seed=1)  # the last row stands in for the empty prompt
    x0 = torch.randn(n, s.dit.in_channels, s.latent, s.latent, generator=torch.Generator().manual_seed(2))
    return DistillData([f"caption {i}" for i in range(n)], x0.to(anima.device), ctx[:n, :TEXT_TOKENS],
                       ctx[n:, :TEXT_TOKENS], pool_named(ctx[:n], mask[:n], "max_padded").float(), n_train=n)


def measure_distill(anima: Anima, s: Setup, forward_s: float) -> dict:
    """One step of ``distill``'s inner loop per timing, on the same rows as the forward."""
    sys.path.insert(0, str(Path(__file__).parent))
    from distill_step import step_runner  # the step benchmarks/distill_step.py times on CPU

    step, _ = step_runner(anima, distill_data(anima, s), s.rows, anima.device)
    out = {}
    for name, checkpointing in (("step", False), ("step_ckpt", True)):
        seconds, peak = with_peak(anima.device, lambda c=checkpointing: median_time(step(c), anima.device, s.reps))
        out |= {f"{name}_s": seconds, f"{name}_over_forward": seconds / forward_s, f"peak_memory_gib_{name}": peak}
    return out


def run(s: Setup, device: torch.device, peak: float | None, t0: float, command: str = COMMAND,
        dtype: torch.dtype = torch.bfloat16) -> dict:
    """Every measurement of one setup, as a record (plain data); ``t0``: when the command started."""
    anima = build(s, device, dtype)
    weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    ctx, mask = conditioning(anima, 4, seed=0)
    fwd, fwd_peak = with_peak(device, lambda: measure_forward(anima, s, ctx[:2]))
    flops = forward_flops(s.dit, s.rows, s.latent, s.latent)
    achieved = flops["total"] / fwd["seconds"] / 1e12
    fwd |= {"peak_memory_gib": fwd_peak, "flops": flops, "achieved_tflops": achieved, "peak_tflops": peak,
            "share_of_peak": None if peak is None else achieved / peak}
    sampling = measure_sampling(anima, s, guided_prompts(anima, ctx, mask))
    distill = measure_distill(anima, s, fwd["seconds"])
    total = time.perf_counter() - t0  # the whole command, build included
    values = {"forward_share_of_peak": fwd["share_of_peak"], "guided_over_unguided": sampling["guided_over_unguided"],
              "total_seconds": total}
    setup = {"name": "full" if s == FULL else "tiny", "dit": asdict(s.dit), "adapter": asdict(s.adapter),
             "dtype": str(dtype).removeprefix("torch."), "latent_side": s.latent, "image_side": 8 * s.latent,
             "rows_per_call": s.rows, "text_rows": CROSSATTN_TOKENS, "steps": s.steps, "sampler": "euler",
             "cfg": CFG, "w": W, "reps": s.reps, "sample_reps": s.sample_reps}
    return {"benchmark": "gpu", "command": command, "date": utc_now(), "git_hash": git_hash(),
            "env": environment_info(_device_name(device)), "setup": setup,
            "params": {"dit": _count(anima.transformer), "adapter": _count(anima.adapter)}, "weights_gib": weights,
            "forward": fwd, "sampling": sampling, "distill": distill, "total_seconds": total,
            "targets": judge(values, judged=s == FULL and device.type == "cuda")}


def judge(values: dict[str, float | None], judged: bool) -> dict[str, dict]:
    """Each target with its value and verdict; ``met`` is None where nothing can be judged (no known peak, or a
    smoke run: the targets are about the full size on a GPU)."""
    def met(key: str, value: float | None) -> bool | None:
        if value is None or not judged:
            return None
        return value >= TARGETS[key] if key == "forward_share_of_peak" else value <= TARGETS[key]

    return {k: {"target": t, "value": values[k], "met": met(k, values[k])} for k, t in TARGETS.items()}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _device_name(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _target(key: str, judged: bool) -> float | None:
    """The issue's target for a ratio, or None where nothing is judged (a smoke run, an unknown peak)."""
    return TARGETS[key] if judged else None


def to_record(raw: dict, machine: dict) -> rec.BenchmarkRecord:
    """The benchmark record: the measures and peak memories as tables, the judged figures as ratios, and `raw`
    (what `run` measured, plain data) kept whole under ``data``."""
    s, f, smp, d, t = (raw[k] for k in ("setup", "forward", "sampling", "distill", "targets"))
    judged = t["guided_over_unguided"]["met"] is not None
    share = "no peak known for this device (pass --peak-tflops)" if f["share_of_peak"] is None else \
        f"{100 * f['share_of_peak']:.1f} % of {f['peak_tflops']:g} TFLOP/s"
    measures = rec.Table(
        f"{'Full-size' if s['name'] == 'full' else 'Tiny (smoke run)'} Anima DiT + adapter ({s['image_side']}x"
        f"{s['image_side']}, latent {s['latent_side']}x{s['latent_side']}, {s['rows_per_call']} rows per DiT call)",
        ["measure", "value"], ["{}", "{}"],
        [[f"one forward (median of {s['reps']})", f"{1e3 * f['seconds']:.1f} ms, {f['flops']['total'] / 1e12:.2f} "
          f"TFLOP, {f['achieved_tflops']:.0f} TFLOP/s"],
         ["forward share of the dense bf16 peak", share],
         [f"guided (pooled_text_proj, w={s['w']:g}, every block) / unguided sampling, {s['steps']} Euler steps, CFG "
          f"{s['cfg']:g}", f"**{smp['guided_over_unguided']:.3f}x** ({smp['guided_s']:.2f} s / {smp['unguided_s']:.2f} s)"],
         ["one distillation step / one forward", f"**{d['step_over_forward']:.2f}x** ({1e3 * d['step_s']:.0f} ms)"],
         ["the same with gradient checkpointing", f"{d['step_ckpt_over_forward']:.2f}x ({1e3 * d['step_ckpt_s']:.0f} ms)"],
         ["whole command (build included)", f"{raw['total_seconds']:.0f} s"]])
    memory = rec.Table("Peak memory allocated by torch while each phase ran, weights included (GiB)",
                   ["weights", "forward", "unguided sampling", "guided sampling", "distillation step",
                    "with checkpointing"], ["{}"] * 6,
                   [[_gib(v) for v in (raw["weights_gib"], f["peak_memory_gib"], smp["peak_memory_gib_unguided"],
                                       smp["peak_memory_gib_guided"], d["peak_memory_gib_step"],
                                       d["peak_memory_gib_step_ckpt"])]])
    ratios = [rec.Ratio("guided / unguided sampling, wall time", smp["guided_over_unguided"],
                    _target("guided_over_unguided", judged)),
              rec.Ratio("distillation step / forward", d["step_over_forward"]),
              rec.Ratio("distillation step with gradient checkpointing / forward", d["step_ckpt_over_forward"]),
              rec.Ratio(f"whole command / {TARGETS['total_seconds']:.0f} s budget",
                    raw["total_seconds"] / TARGETS["total_seconds"], 1.0 if judged else None)]
    if f["share_of_peak"] is not None:
        ratios.insert(0, rec.Ratio("forward: achieved / dense bf16 peak TFLOP/s", f["share_of_peak"],
                               _target("forward_share_of_peak", judged), "higher"))
    notes = ["FLOPs of one forward by part (TFLOP): " + ", ".join(
        f"{k} {v / 1e12:.3g}" for k, v in f["flops"].items() if k != "total")
        + ". Matmuls only, 2 per multiply-add (formula: `forward_flops` in the script, checked against torch's "
        "FlopCounterMode on a tiny config by the tests)."]
    if not judged:
        notes.append("Smoke run: the targets are about the full size on a GPU, so none is judged here.")
    return rec.BenchmarkRecord("gpu", "The full-size Anima on one GPU", raw["command"], machine, [measures, memory],
                           ratios, notes, date=raw["date"], git_hash=raw["git_hash"], data=raw)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (only with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: a tiny config, a few steps (needs --records)")
    ap.add_argument("--records", type=Path, default=None, help="where the JSON record goes (default: "
                    "reports/benchmarks/)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak, TFLOP/s (default: looked up by device name)")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here; run on a GPU machine, or smoke-test with --device cpu --tiny")
    if device.type != "cuda" and not args.tiny:
        ap.error(f"--device {args.device}: the full-size measurement needs CUDA; use --tiny for a smoke run")
    if args.tiny and args.records is None:
        ap.error("--tiny needs --records DIR: a smoke run must not overwrite the committed record")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU: the smoke run is about the code path, not speed
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    machine = rec.machine_info(torch.get_num_threads(), "bf16, random weights", device=_device_name(device))
    record = to_record(run(TINY if args.tiny else FULL, device, peak, t0, command=" ".join([COMMAND, *argv])), machine)
    path = rec.write_record(record, args.records or rec.RECORDS_DIR)
    print(record.markdown(), f"\nwrote {path}", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
