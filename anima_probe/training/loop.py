"""Shared machinery of the two trainers (the toy world's tiny Anima, the modulation-source distillation).

What makes a run trustworthy rather than what it learns: a per-step random generator (so a resumed run draws exactly
the batches, noise levels and noise an uninterrupted run would), warmup + cosine learning rate, EMA weights,
atomic checkpoints that are only ever replaced by a complete newer one, a CSV log, and a NaN guard that stops
without overwriting the last good checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from anima_probe.errors import InputError, RunFailed
from anima_probe.pipeline.atomic import atomic_path, atomic_write_text


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random stream for one optimisation step: a function of (seed, step) alone, hence exact resume."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup, then cosine down to `floor`·lr at the last step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def save_checkpoint(path: Path, state: dict) -> None:
    """Written atomically: a crash never leaves a partial checkpoint behind, only the last complete one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict | None:
    """A checkpoint written by save_checkpoint (tensors and plain data only: weights_only=True), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle refused by weights_only, a truncated file, ...: torch names neither file nor fix
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a checkpoint this suite wrote ({reason[:160]}); move it away or use a new "
                         "output folder") from None


class CSVLog:
    """Append-only training log; on resume, rows past the checkpoint's step are dropped so none appear twice."""

    def __init__(self, path: Path, fields: list[str], resume_step: int = 0):
        self.path, self.fields = Path(path), fields
        rows = []
        if resume_step and self.path.is_file():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())  # a crash here keeps the old log, rows and all

    def write(self, **row) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    def read(self) -> list[dict]:
        with self.path.open() as f:
            return list(csv.DictReader(f))


class NonFiniteLoss(RunFailed):
    """Training produced a NaN/inf loss; the last good checkpoint is left untouched."""


def check_finite(loss: torch.Tensor, step: int, checkpoint: Path) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()} at step {step}; stopped without saving. The last good "
                            f"checkpoint is {checkpoint} (resume from it with a lower learning rate).")
