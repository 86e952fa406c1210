"""Benchmark: does the toy world train within its 45-minute budget on a 2-core CPU, and does that model learn its world?

Trains the `cpu` profile (`anima-probe train-toy OUT --profile cpu`: the shipped architecture and data, batch 64,
1,200 steps) from scratch into a fresh folder, timing the whole call (world generation, tokenizers, frozen-Qwen
encoding, training, writing the model folder). Then runs `toyworld-evidence` (the experiment behind
reports/toyworld.md, default config) on that model, on the same run's last raw (non-EMA) weights and on the shipped
GPU-trained model in the same process, so the three can be compared cell by cell.

Writes: reports/benchmarks/toy-cpu-budget.json; data/toyworld/cpu_train.json (timing, machine,
config, evidence metrics) and data/toyworld/cpu_loss.csv (the run's loss log); data/toyworld/loss.png (both loss
curves). Run on a quiet machine (nothing else running): .venv/bin/python benchmarks/toy_cpu_budget.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from anima_probe.model.anima import load_anima
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline import experiment
from anima_probe.pipeline.atomic import atomic_write_json
from anima_probe.pipeline.figures import new_figure, save_figure
from anima_probe.pipeline.runs import read_run
from anima_probe.pipeline.timing import timed
from anima_probe.toyworld.train import PROFILES, checkpoint_model_folder, train_toy_world

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toyworld"
COMMAND = ".venv/bin/python benchmarks/toy_cpu_budget.py"
BUDGET_S = 45 * 60


def losses(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


def ends(loss: np.ndarray, k: int = 100) -> str:
    return f"{loss[:k].mean():.2f} -> {loss[-k:].mean():.2f}"


def evidence(model_dir: Path, results: Path) -> dict:
    run_dir = experiment.run("toyworld-evidence", anima=load_anima(model_dir, with_vae=False), results=results,
                             cache_dir=results / "cache", progress=False)
    return read_run(run_dir).metrics


def loss_figure(cpu: np.ndarray, gpu: np.ndarray, cpu_batch: int, gpu_batch: int, path: Path) -> None:
    fig = new_figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for loss, batch, label in ((gpu, gpu_batch, f"gpu profile (shipped), batch {gpu_batch}"),
                               (cpu, cpu_batch, f"cpu profile, batch {cpu_batch}")):
        smooth = np.convolve(loss, np.ones(25) / 25, mode="valid")  # (steps - 24,)
        ax.plot((np.arange(len(smooth)) + 25) * batch / 1000, smooth, label=label)
    ax.set(xscale="log", yscale="log", xlabel="training images seen (thousands)",
           ylabel="loss (moving mean of 25 steps)", title="Toy world training loss")
    ax.legend()
    save_figure(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="a new or empty folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="toy-cpu-"))
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: not empty; the budget is measured on a fresh run (a resumed one would hide time)")
    cfg = PROFILES["cpu"]
    load_before = os.getloadavg()[0]
    took, model_dir = timed(lambda: train_toy_world(out, cfg, "cpu"))
    wall = took.wall
    load_after = os.getloadavg()[0]
    cpu_loss, gpu_loss = losses(out / "run" / "loss.csv"), losses(TOY / "loss.csv")
    with (out / "run" / "loss.csv").open() as f:
        loop = float(list(csv.DictReader(f))[-1]["seconds"])
    gpu_record = json.loads((TOY / "gpu_train.json").read_text())
    cpu_m, gpu_m = evidence(model_dir, out / "evidence"), evidence(ROOT / "data" / "toyworld" / "model", out / "evidence")
    raw_m = evidence(checkpoint_model_folder(out, out / "model-last-step", ema=False), out / "evidence")

    record = {"device": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average_1min": [load_before, load_after], "torch": torch.__version__,
              "wall_seconds": wall, "loop_seconds": loop, "s_per_step": loop / cfg.steps, "steps": cfg.steps,
              "budget_seconds": BUDGET_S, "config": asdict(cfg), "evidence": cpu_m, "last_step_evidence": raw_m,
              "shipped_evidence": gpu_m}
    atomic_write_json(TOY / "cpu_train.json", record)
    shutil.copyfile(out / "run" / "loss.csv", TOY / "cpu_loss.csv")
    loss_figure(cpu_loss, gpu_loss, cfg.batch_size, gpu_record["config"]["batch_size"], TOY / "loss.png")

    machine = rec.machine_info(torch.get_num_threads(), f"1-min load average {load_after:.1f} at the end")
    machine["load_average_1min"] = round(load_before, 2)
    bench = to_record(record, gpu_record, ends(cpu_loss), ends(gpu_loss), machine)
    print(bench.markdown())
    print(f"wrote {rec.write_record(bench)}")
    return 0


def to_record(cpu: dict, gpu: dict, cpu_loss: str, gpu_loss: str, machine: dict, **provenance) -> rec.BenchmarkRecord:
    """From the cpu run's record (as written to data/toyworld/cpu_train.json), the shipped gpu run's
    (gpu_train.json) and both loss summaries (`ends`)."""
    cfg, wall, loop = cpu["config"], cpu["wall_seconds"], cpu["loop_seconds"]
    ratio = rec.Ratio("cpu profile: whole command / 45-min budget", wall / cpu["budget_seconds"], 1.0)
    runs = rec.Table(f"Training the toy world on CPU (`train-toy --profile cpu`; budget {cpu['budget_seconds'] / 60:.0f} min)",
                 ["profile", "device", "steps x batch", "whole command", "training loop", "per step",
                  "loss (first -> last 100 steps)"], ["{}", "{}", "{}", "**{:.1f} min**", "{:.1f} min", "{:.3g} s", "{}"],
                 [["cpu", "this CPU", f"{cpu['steps']} x {cfg['batch_size']}", wall / 60, loop / 60, loop / cpu["steps"],
                   cpu_loss],
                  ["gpu (shipped)", gpu["device"], f"{gpu['steps']} x {gpu['config']['batch_size']}", None,
                   gpu["train_seconds"] / 60, gpu["ms_per_step"] / 1000, gpu_loss]])
    models = [cpu["evidence"], cpu["last_step_evidence"], cpu["shipped_evidence"]]
    evidence = rec.Table("Does the cpu-profile model learn its world? `toyworld-evidence`, default config, three models "
                     "in this run", ["metric", "cpu profile (EMA, as written)", "cpu profile, last step without EMA",
                                     "gpu profile (shipped)"], ["{}", "{:.3f}", "{:.3f}", "{:.3f}"],
                     [[f"artist accuracy on 96 samples (chance {models[0]['chance/artist']:.3f})",
                       *(m["accuracy/artist"] for m in models)],
                      [f"content accuracy on 96 samples (chance {models[0]['chance/content']:.3f})",
                       *(m["accuracy/content"] for m in models)],
                      *([label, *(m[key] for m in models)] for label, key in (
                          ("toy quality score, p+ prompts", "quality/p_plus_mean"),
                          ("toy quality score, p- prompts", "quality/p_minus_mean"),
                          ("paired gap p+ - p-", "quality/gap_mean"),
                          ("share of pairs where p+ wins", "quality/p_plus_wins")))])
    seen = cpu["steps"] * cfg["batch_size"] / (gpu["steps"] * gpu["config"]["batch_size"])
    note = (f"Whole command / budget: {ratio.value:.2f}x ({ratio.verdict()}). The cpu profile sees {seen:.2f}x the "
            "training images of the gpu profile. Loss curves: `data/toyworld/loss.png`.")
    return rec.BenchmarkRecord("toy-cpu-budget", "Training the toy world on CPU within its budget", COMMAND, machine,
                           [runs, evidence], [ratio], [note], **provenance)


if __name__ == "__main__":
    sys.exit(main())
