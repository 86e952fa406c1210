"""Benchmark: does the toy world train within its 45-minute budget on a 2-core CPU, and does that model learn its world?

Trains the `cpu` profile (`anima-probe train-toy OUT --profile cpu`: the shipped architecture and data, batch 64,
1,200 steps) from scratch into a fresh folder, timing the whole call (world generation, tokenizers, frozen-Qwen
encoding, training, writing the model folder). Then runs `toyworld-evidence` (the experiment behind
reports/toyworld.md, default config) on that model, on the same run's last raw (non-EMA) weights and on the shipped
GPU-trained model in the same process, so the three can be compared cell by cell.

Writes: the `toy-cpu-budget` section of reports/performance.md; data/toyworld/cpu_train.json (timing, machine,
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
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from anima_probe.model.anima import load_anima
from anima_probe.pipeline import experiment
from anima_probe.pipeline.report import load_run
from anima_probe.pipeline.runs import atomic_write_text, new_figure, save_figure, update_section
from anima_probe.toyworld.train import PROFILES, checkpoint_model_folder, train_toy_world

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toyworld"
BUDGET_S = 45 * 60


def losses(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


def ends(loss: np.ndarray, k: int = 100) -> str:
    return f"{loss[:k].mean():.2f} -> {loss[-k:].mean():.2f}"


def evidence(model_dir: Path, results: Path) -> dict:
    run_dir = experiment.run("toyworld-evidence", anima=load_anima(model_dir, with_vae=False), results=results,
                             cache_dir=results / "cache", progress=False)
    return load_run(run_dir).metrics


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
    t0 = time.perf_counter()
    model_dir = train_toy_world(out, cfg, "cpu")
    wall = time.perf_counter() - t0
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
    atomic_write_text(TOY / "cpu_train.json", json.dumps(record, indent=2) + "\n")
    shutil.copyfile(out / "run" / "loss.csv", TOY / "cpu_loss.csv")
    loss_figure(cpu_loss, gpu_loss, cfg.batch_size, gpu_record["config"]["batch_size"], TOY / "loss.png")

    def row(label, key, fmt="{:.3f}"):
        return f"| {label} | {fmt.format(cpu_m[key])} | {fmt.format(raw_m[key])} | {fmt.format(gpu_m[key])} |"

    verdict = "met" if wall <= BUDGET_S else "NOT met"
    md = "\n".join([
        f"Machine: {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"1-min load average {load_before:.1f} at the start, {load_after:.1f} at the end. Generated by "
        "`.venv/bin/python benchmarks/toy_cpu_budget.py` (do not edit).",
        "",
        "## Training the toy world on CPU (`train-toy --profile cpu`; budget 45 min)",
        "",
        "| profile | device | steps x batch | whole command | training loop | per step | loss (first -> last 100 steps) |",
        "|---|---|---|---|---|---|---|",
        f"| cpu | this CPU | {cfg.steps} x {cfg.batch_size} | **{wall / 60:.1f} min** | {loop / 60:.1f} min | "
        f"{loop / cfg.steps:.2f} s | {ends(cpu_loss)} |",
        f"| gpu (shipped) | {gpu_record['device']} | {gpu_record['steps']} x {gpu_record['config']['batch_size']} | "
        f"- | {gpu_record['train_seconds'] / 60:.1f} min | {gpu_record['ms_per_step'] / 1000:.3f} s | {ends(gpu_loss)} |",
        "",
        f"Whole command / budget: {wall / BUDGET_S:.2f}x (target met if <= 1: {verdict}). The cpu profile sees "
        f"{cfg.steps * cfg.batch_size / (gpu_record['steps'] * gpu_record['config']['batch_size']):.2f}x the training "
        "images of the gpu profile. Loss curves: `data/toyworld/loss.png`.",
        "",
        "**Does the cpu-profile model learn its world? `toyworld-evidence`, default config, three models in this run**",
        "",
        "| metric | cpu profile (EMA, as written) | cpu profile, last step without EMA | gpu profile (shipped) |",
        "|---|---|---|---|",
        row(f"artist accuracy on 96 samples (chance {cpu_m['chance/artist']:.3f})", "accuracy/artist"),
        row(f"content accuracy on 96 samples (chance {cpu_m['chance/content']:.3f})", "accuracy/content"),
        row("toy quality score, p+ prompts", "quality/p_plus_mean", "{:.2f}"),
        row("toy quality score, p- prompts", "quality/p_minus_mean", "{:.2f}"),
        row("paired gap p+ - p-", "quality/gap_mean", "{:.2f}"),
        row("share of pairs where p+ wins", "quality/p_plus_wins", "{:.2f}"),
    ])
    update_section(ROOT / "reports" / "performance.md", "toy-cpu-budget", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
