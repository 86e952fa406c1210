"""Benchmark: what does modulation guidance cost a sampler run, against plain CFG sampling at the same steps?

Each condition is one whole ``guided.sample_guided`` run (Euler, CFG 4, cond and uncond rows in one DiT call
per step) from the same noise. The per-prompt work (text encoding, pooling, every projection, the Eq. 3 delta) is done
once before timing, as the sampler does it, and reported on its own. Conditions run interleaved in a fresh random
order every repetition, so drift in the shared CPU's load hits all of them alike; the cost is the median over
repetitions of the paired ratio (condition time / unguided time of the same repetition). Target: <= 1.03x.

Sizes: the shipped toy model (128 wide, 5 blocks, 256 tokens), and a full-width Anima DiT (2048 wide, 16 heads) cut
to 2 blocks with random weights, where each block costs what it costs on Anima.

Run: .venv/bin/python benchmarks/guided_sampling.py   (writes reports/benchmarks/guided-sampling.json)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from anima_probe.guidance.guided import Guidance, GuidedPrompts, prepare, sample_guided
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.schedules import Schedule
from anima_probe.guidance.sources import CosmosPooledAdapter, PooledTextProjection
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.timing import interleaved, paired, timed

COMMAND = ".venv/bin/python benchmarks/guided_sampling.py"
TARGET = 1.03  # a guided run may cost at most 3% more CPU time than an unguided one
CFG = 4.0
P_PLUS = "absurdres, highres, masterpiece, best quality, score_7, score_8, score_9"
P_MINUS = "worst quality, low quality, score_1, score_2, score_3"


def _random_proj(d: int, text_dim: int) -> PooledTextProjection:
    torch.manual_seed(0)
    proj = PooledTextProjection(d, text_dim)
    torch.nn.init.normal_(proj.linear_out.weight, std=0.05)  # non-zero: the guided runs do real additions
    return proj


def _random_adapter(d: int, n: int, clip_dim: int) -> CosmosPooledAdapter:
    torch.manual_seed(0)
    adapter = CosmosPooledAdapter(d, n, clip_dim)
    torch.nn.init.normal_(adapter.scales, std=0.05)
    return adapter


def measure(anima, conditions: dict, noise: torch.Tensor, steps: int, reps: int) -> dict:
    """name -> medians of wall and CPU seconds, and of the paired ratios to the first (unguided) condition."""
    def run(gp, guidance):
        return lambda: sample_guided(anima, gp, guidance, CFG, noise, steps=steps)

    times = interleaved({name: run(*cond) for name, cond in conditions.items()}, reps)
    return paired(times, next(iter(conditions)))


def toy_conditions(anima, prompts: list[str], tmp: Path) -> tuple[dict, float]:
    from anima_probe.model.clip import load_clip, write_tiny_clip

    d, n = anima.dit_config.hidden, anima.num_blocks
    proj = _random_proj(d, anima.dit_config.text_dim)
    prepare_time, gp_a = timed(lambda: prepare(anima, proj, prompts, P_PLUS, P_MINUS))
    clip = load_clip(write_tiny_clip(tmp / "clip", hidden=64, layers=1))
    gp_b = prepare(anima, _random_adapter(d, n, clip.dim), prompts, P_PLUS, P_MINUS, clip=clip)
    return {
        "unguided CFG (no hooks)": (gp_a, None),
        "(a) pooled_text_proj, uniform w=3, per-row-base": (gp_a, Guidance(3.0)),
        "(a) pooled_text_proj, profile sorryhyun, final_w=1, cond-only": (
            gp_a, Guidance(3.0, Schedule.parse("sorryhyun"), final_w=1.0, row_policy="cond-only")),
        "(b) cosmos adapter, uniform w=3, official": (gp_b, Guidance(3.0)),
    }, prepare_time.wall


def full_width_two_blocks():
    """A full-width Anima DiT with 2 of its 28 blocks, random weights, and hand-made conditioning (no text path)."""
    from dataclasses import replace

    from anima_probe.model.anima import Anima, build_transformer
    from anima_probe.model.dit_file import ANIMA_DIT

    c = replace(ANIMA_DIT, num_blocks=2)
    torch.manual_seed(0)
    anima = Anima(transformer=build_transformer(c, meta=False).eval(), adapter=None, dit_config=c)
    g = torch.Generator().manual_seed(0)
    proj = _random_proj(c.hidden, c.text_dim)
    with torch.no_grad():
        base, pos, neg, empty = proj(torch.randn(4, c.text_dim, generator=g)).chunk(4)  # (1, D) each
    ctx = torch.randn(2, 512, c.text_dim, generator=g)
    gp = GuidedPrompts("pooled_text_proj", ctx[:1], ctx[1:], base, {"per-row-base": empty, "cond-only": empty,
                       "official": empty}, pos - neg, None)
    return anima, {"unguided CFG (no hooks)": (gp, None), "(a) uniform w=3, per-row-base": (gp, Guidance(3.0))}


def to_record(results: dict[str, dict], prepare_s: float, threads: int, machine: dict,
              **provenance) -> rec.BenchmarkRecord:
    """`results` = size description -> `measure`'s medians; `prepare_s` = the one-off per-prompt work."""
    tables, ratios = [], []
    for size, res in results.items():
        rows = [[name, r["cpu_s"], r["cpu_ratio"], r["wall_s"], r["wall_ratio"]] for name, r in res.items()]
        tables.append(rec.Table(size, ["condition", "median CPU time", "CPU ratio to unguided", "median wall",
                                   "wall ratio"], ["{}", "{:.2f} s", "**{:.3f}x**", "{:.2f} s", "{:.3f}x"], rows))
        ratios += [rec.Ratio(f"{size.split(' (')[0]}: {name} / unguided, CPU time", r["cpu_ratio"], TARGET)
                   for name, r in list(res.items())[1:]]
    toy_run = next(iter(results.values()))["unguided CFG (no hooks)"]["wall_s"]
    worst = max(r.value for r in ratios)  # over the guided conditions: the unguided one is 1 by construction
    notes = ["Median of paired ratios over interleaved repetitions (random order each repetition). Each run is a "
             "whole `sample_guided` call: hooks registered and removed, cond + uncond rows in one DiT call per step. "
             f"{threads} torch thread; the target is judged on process CPU time, since wall time on this shared CPU "
             "moves with other jobs' load (wall ratios shown for completeness).",
             f"Worst CPU-time ratio {worst:.3f}x: {'target met' if worst <= TARGET else 'target NOT met'}. One-off "
             f"per prompt set, outside the timed runs: text encoding + pooling + projections + delta = {prepare_s:.2f}"
             f" s on the toy model ({prepare_s / toy_run:.2f} of one unguided run); it is never repeated per step or "
             "per grid cell. Differences of a percent or two are within the noise of this shared CPU."]
    return rec.BenchmarkRecord("guided-sampling", f"Mod-guided sampling vs unguided CFG sampling (CFG {CFG:g}, same "
                           f"steps, same noise; target <= {TARGET:g}x)", COMMAND, machine, tables, ratios, notes,
                           **provenance)


def main() -> None:
    from anima_probe.model.anima import load_anima

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    # One torch thread: CPU time then counts work done, not OpenMP spin-waits; wall time on this shared 2-core
    # machine swings by +-20% with the other jobs' load, so the target is judged on the CPU-time ratio.
    threads = 1
    torch.set_num_threads(threads)
    machine = rec.machine_info(threads, "shared with other jobs; fp32")
    toy = load_anima(with_vae=False)
    prompts = ["score_8, 1girl, solo, @kiri_ama", "score_8, scenery, landscape, no humans, @neon_yoru"]
    toy_steps, full_steps, reps, full_reps = 4, 2, args.reps, max(3, args.reps // 3)
    with tempfile.TemporaryDirectory() as tmp:
        conds, prepare_s = toy_conditions(toy, prompts, Path(tmp))
        results = {f"toy model (128 wide, 5 blocks), {len(prompts)} prompts, 256 tokens, {toy_steps} Euler steps, "
                   f"{reps} repetitions": measure(toy, conds, initial_noise(toy, len(prompts), 32, 0), toy_steps,
                                                  reps)}
    full, full_conds = full_width_two_blocks()
    results[f"full width (2048, 16 heads), 2 blocks, random weights, 1 prompt, 256 tokens, {full_steps} Euler "
            f"steps, {full_reps} repetitions"] = measure(full, full_conds, initial_noise(full, 1, 32, 0),
                                                         full_steps, full_reps)
    record = to_record(results, prepare_s, threads, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
