"""Benchmark: how many DiT forwards and how much time does Spectrum save at 28 steps, and at what error?

On the shipped toy model (pixel space, 5 blocks), 4 toy-world prompts sampled with Euler at CFG 4 over the shift-3 schedule
from one noise draw, four conditions side by side: full sampling at 28 steps (the reference), Spectrum with the facts
sheet's defaults, Spectrum ``FAST`` (fixed before any error was measured, see ``guidance.spectrum``), and the
control that any caching must beat: plain Euler with as few steps as ``FAST`` has real forwards. Forwards are
counted (DiT calls that run the blocks); times are interleaved repetitions in a fresh random order, compared by
the median of paired ratios to the full run (process CPU time with one torch thread; wall time beside it). Error is
against the full run's image: relative L2 of the sampled x0 and mean absolute pixel error in [0, 1].
Target: FAST >= 2.5x fewer DiT forwards at 28 steps (issue 15), with its error reported.

Run: .venv/bin/python benchmarks/spectrum.py   (writes reports/benchmarks/spectrum.json)
"""

from __future__ import annotations

import argparse

import torch

from anima_probe.guidance.samplers import cfg_velocity, initial_noise, sample_euler, simple_sigmas
from anima_probe.guidance.spectrum import FACTS_SHEET, FAST, Spectrum
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.timing import interleaved, paired
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS, CONTENT_TYPES

COMMAND = ".venv/bin/python benchmarks/spectrum.py"
STEPS, CFG, TARGET = 28, 4.0, 2.5
PROMPTS = [f"{meta}, {', '.join(CONTENT_TAGS[c])}, {a}" for meta, c, a in
           [("score_8", CONTENT_TYPES[0], ARTISTS[0]), ("score_8", CONTENT_TYPES[2], ARTISTS[1]),
            ("score_5", CONTENT_TYPES[1], ARTISTS[2]), ("score_5", CONTENT_TYPES[3], ARTISTS[3])]]


def conditions(anima, prompts: list[str], seed: int = 0) -> dict:
    """name -> (run() -> x0, forwards()) for the four conditions, all from one noise draw."""
    tc = encode_prompts(anima, prompts + [""])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)  # (B, 512, Dt)
    x = initial_noise(anima, len(prompts), 32, seed).to(anima.device, anima.dtype)  # (B, C, h, w)

    def plain(steps):
        return (lambda: sample_euler(cfg_velocity(anima.velocity, cond, uncond, CFG), x, simple_sigmas(steps),
                                     disable=True)), (lambda: steps)

    def spectrum(cfg):
        sp = Spectrum(anima, STEPS, cfg)

        def run():
            sp.forwards = 0
            return sample_euler(cfg_velocity(sp.model, cond, uncond, CFG), x, simple_sigmas(STEPS), disable=True)
        return run, (lambda: sp.forwards)

    fast_real = sum(Spectrum(anima, STEPS, FAST).plan)
    return {f"full, {STEPS} steps": plain(STEPS), "Spectrum, facts-sheet defaults": spectrum(FACTS_SHEET),
            "Spectrum FAST": spectrum(FAST), f"plain Euler, {fast_real} steps (control)": plain(fast_real)}


def measure(anima, conds: dict, reps: int) -> dict[str, dict]:
    """name -> forwards, errors against the first condition, and the paired time medians."""
    with torch.no_grad():
        outs = {name: run() for name, (run, _) in conds.items()}
        ref = outs[next(iter(conds))]
        img = {name: anima.decode(o).float() for name, o in outs.items()}  # (B, 3, H, W) in [0, 1]
    # the error runs above warmed everything up
    times = paired(interleaved({n: run for n, (run, _) in conds.items()}, reps, warmup=0), next(iter(conds)))
    first = next(iter(conds))
    return {name: {"forwards": conds[name][1](), "rel_l2": float((o - ref).norm() / ref.norm()),
                   "pixel_mae": float((img[name] - img[first]).abs().mean()), **times[name]}
            for name, o in outs.items()}


def to_record(res: dict[str, dict], reps: int, machine: dict, **provenance) -> rec.BenchmarkRecord:
    full = next(iter(res.values()))
    rows = [[n, r["forwards"], full["forwards"] / r["forwards"], r["rel_l2"], r["pixel_mae"], r["cpu_s"],
             1 / r["cpu_ratio"], r["wall_s"], 1 / r["wall_ratio"]] for n, r in res.items()]
    table = rec.Table(f"toy model, {len(PROMPTS)} prompts, Euler, CFG {CFG:g}, {reps} interleaved repetitions",
                      ["condition", "DiT forwards", "forwards saved", "rel. L2 error (x0)", "mean abs. pixel error",
                       "median CPU", "CPU speed-up", "median wall", "wall speed-up"],
                      ["{}", "{:d}", "**{:.2f}x**", "{:.4f}", "{:.4f}", "{:.2f} s", "{:.2f}x", "{:.2f} s",
                       "{:.2f}x"], rows)
    fast = res["Spectrum FAST"]
    control = list(res.values())[-1]
    ratios = [rec.Ratio("Spectrum FAST: DiT forwards saved at 28 steps", full["forwards"] / fast["forwards"],
                        TARGET, "higher"),
              rec.Ratio("Spectrum FAST: CPU-time speed-up", 1 / fast["cpu_ratio"], None, "higher"),
              rec.Ratio("Spectrum FAST: pixel error / that of plain Euler at equal forwards",
                        fast["pixel_mae"] / control["pixel_mae"], None)]
    notes = ["Error is against the full 28-step run from the same noise, not against a ground truth: it is what "
             "caching changes. The control (plain Euler with as many steps as FAST has real forwards) costs the "
             "same number of DiT forwards; Spectrum is worth its complexity where its error is below the control's.",
             f"FAST: {full['forwards'] / fast['forwards']:.2f}x fewer DiT forwards for a {1 / fast['cpu_ratio']:.2f}x "
             "CPU-time speed-up; the difference is what cached steps still run (patch and time embeddings, the "
             "head, the forecast's small ridge solve) and the sampler. On the 5-block toy model those are a larger "
             "share of a step than on the 28-block Anima."]
    return rec.BenchmarkRecord("spectrum", f"Spectrum feature forecasting vs full sampling ({STEPS} steps; "
                               f"target >= {TARGET:g}x fewer DiT forwards)", COMMAND, machine, [table], ratios,
                               notes, data={"results": res}, **provenance)


def main() -> None:
    from anima_probe.model.anima import load_anima

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    torch.set_num_threads(1)  # CPU time then counts work done; wall time on the shared machine is shown beside it
    machine = rec.machine_info(1, "shared with other jobs; fp32")
    anima = load_anima(with_vae=False)
    record = to_record(measure(anima, conditions(anima, PROMPTS), args.reps), args.reps, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
