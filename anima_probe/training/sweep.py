"""Which learning rate? A short sweep before the distillation run, recorded in the run folder (issue 11 item 6).

Each learning rate trains a short run (the same seed, data, batches and validation; ``steps`` steps, warmup scaled
down with them) into ``<out>/sweep/lr<lr>/``, a complete distillation run folder of its own, so an interrupted
sweep resumes where it stopped. The rule, fixed before any run: the lowest final validation loss wins; a learning
rate whose run stopped on a non-finite loss is out. ``<out>/sweep.csv`` keeps every candidate's final validation row
and which one was chosen; the main run then trains with it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

from anima_probe.errors import RunFailed, UsageError
from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.training.distill import DistillConfig, distill
from anima_probe.training.loop import NonFiniteLoss


def lr_sweep(cfg: DistillConfig, out: Path, captions, anima, lrs: list[float], steps: int, **distill_kwargs
             ) -> DistillConfig:
    """``cfg`` with the chosen learning rate, after short runs at each of ``lrs``; writes ``out/sweep.csv``."""
    if len(lrs) < 2 or min(lrs) <= 0 or steps < 1:
        raise UsageError(f"--sweep-lr needs at least two positive learning rates and --sweep-steps >= 1, got "
                         f"{lrs} and {steps}")
    out = Path(out)
    rows = []
    for lr in lrs:
        short = replace(cfg, lr=lr, steps=steps, warmup=min(cfg.warmup, steps // 10),
                        val_every=min(cfg.val_every, steps), checkpoint_every=min(cfg.checkpoint_every, steps))
        folder = out / "sweep" / f"lr{lr:g}"
        try:
            distill(short, folder, captions, anima, data_cache=out / "data.pt", **distill_kwargs)
        except NonFiniteLoss:
            rows.append({"lr": lr, "steps": steps, "val_loss": float("inf")})
            continue
        with open(folder / "val.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        rows.append({"lr": lr, **{k: float(v) for k, v in last.items()}})
    best = min(rows, key=lambda r: r["val_loss"])
    if best["val_loss"] == float("inf"):
        raise RunFailed(f"every learning rate of the sweep {lrs} stopped on a non-finite loss")
    columns = list(dict.fromkeys(k for r in rows for k in r)) + ["chosen"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="")
    writer.writeheader()
    writer.writerows({**r, "chosen": int(r is best)} for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    return replace(cfg, lr=best["lr"])
