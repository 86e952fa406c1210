"""Benchmark: does the positive-control toy world (`train-toy --profile positive-control-cpu`) fit the 45-minute CPU
budget of an idle 2-core machine, when it has to be trained on a shared one?

A shared machine's wall clock says little about an idle one, so the budget is judged from a ratio measured in this
run: the same number of interleaved optimisation steps of the `cpu` profile (whose whole command took 39.6 min on the
idle machine, `data/toyworld/cpu_train.json`) and of the positive-control profile, timed in process CPU seconds on
one thread. The idle projection is that ratio times the cpu profile's idle time. The run itself is timed too (wall,
process CPU, the 1-min load average sampled every 30 s), and written where the shipped model lives.

Writes data/toyworld/positive_control/{model/, train.json, loss.csv}. Resumable: rerun with the same --out.
    .venv/bin/python benchmarks/positive_control_budget.py --out /tmp/pc-run [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from anima_probe.model.anima import Anima
from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.toyworld import train as toy
from anima_probe.training import loop as training

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toyworld"
SHIP = TOY / "positive_control"
BUDGET_S = 45 * 60
PROFILE = "positive-control-cpu"


def step_cpu_seconds(names: tuple[str, ...], steps: int) -> dict[str, list[float]]:
    """Process CPU seconds of `steps` full optimisation steps per profile, interleaved (so load drifts hit both)."""
    nets = {}
    for name in names:
        cfg = toy.PROFILES[name]
        data, _, vocab = toy._data(cfg, Path(tempfile.mkdtemp(prefix="pc-ratio-")), torch.device("cpu"))
        models = toy._models(cfg, vocab, torch.device("cpu"))
        opt = torch.optim.AdamW([p for m in models.values() for p in m.parameters()], lr=cfg.lr)
        nets[name] = (cfg, data, models, Anima(models["transformer"], models["adapter"], cfg.dit()), opt)
    out = {name: [] for name in names}
    for step in range(steps + 1):  # step 0 warms allocators and is not counted
        for name, (cfg, data, models, net, opt) in nets.items():
            c0 = time.process_time()
            loss = toy._loss(cfg, net, models.get("projection"), data, step, torch.device("cpu"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step:
                out[name].append(time.process_time() - c0)
    return out


class LoadSampler(threading.Thread):
    """The 1-min load average every `every` seconds while the training runs."""

    def __init__(self, every: float = 30.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="training folder (rerun with the same one to resume)")
    ap.add_argument("--ratio-steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 on a shared machine; the budget comes from the ratio either way)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the budget comes from the ratio below, on the same threads
    cpu_record = json.loads((TOY / "cpu_train.json").read_text())
    ratio_times = step_cpu_seconds(("cpu", PROFILE), args.ratio_steps)
    ratio = float(np.median(ratio_times[PROFILE]) / np.median(ratio_times["cpu"]))
    cfg = toy.PROFILES[PROFILE]
    state = training.load_checkpoint(args.out / "run" / "checkpoint.pt")
    resumed_from = None if state is None else state["step"]  # a resumed run's wall covers only its remaining steps
    del state
    sampler = LoadSampler()
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    model_dir = toy.train_toy_world(args.out, cfg, "cpu")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sampler.stop.set()
    # idle projection: the cpu profile's idle whole command, scaled by steps and by the measured per-step ratio
    idle = cpu_record["wall_seconds"] * ratio * cfg.steps / cpu_record["steps"]
    record = {"device": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "wall_seconds": wall, "process_cpu_seconds": cpu,
              "load_average_1min": {"mean": float(np.mean(sampler.samples)), "min": float(min(sampler.samples)),
                                    "max": float(max(sampler.samples)), "samples": len(sampler.samples)},
              "ratio_step_cpu_seconds": {k: [round(v, 3) for v in vs] for k, vs in ratio_times.items()},
              "step_cost_ratio_vs_cpu_profile": ratio,
              "idle_projection_seconds": idle, "cpu_profile_idle_wall_seconds": cpu_record["wall_seconds"],
              "budget_seconds": BUDGET_S, "steps": cfg.steps, "resumed_from": resumed_from, "config": asdict(cfg),
              "command": "train-toy OUT --profile positive-control-cpu (via benchmarks/positive_control_budget.py)"}
    SHIP.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, SHIP / "model", dirs_exist_ok=True)
    shutil.copyfile(args.out / "run" / "loss.csv", SHIP / "loss.csv")
    atomic_write_text(SHIP / "train.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("config", "ratio_step_cpu_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
