"""Where does a guided sample grid go? Its figure and its numbered run folder (``anima-probe sample``).

A grid is images (R, C, B, 3, H, W) in [0, 1]: rows = guidance settings, columns = CFG scales, the B prompts side
by side in each cell. The folder holds everything needed to look at it again and to re-run it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anima_probe.pipeline.atomic import atomic_write_bytes, atomic_write_json
from anima_probe.pipeline.figures import new_figure, save_figure
from anima_probe.pipeline.rundirs import staged_run_dir


def grid_figure(images: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str]):
    """images (R, C, B, 3, H, W) in [0, 1] -> a figure: rows = guidance settings, columns = CFG scales, the B
    prompts side by side inside each cell."""
    R, C, B = images.shape[:3]
    fig = new_figure(figsize=(1.1 * B * C + 0.8, 1.2 * R + 0.6))
    for r in range(R):
        for c in range(C):
            ax = fig.add_subplot(R, C, r * C + c + 1)
            strip = images[r, c].permute(2, 0, 3, 1).reshape(images.shape[-2], -1, images.shape[3])  # (H, B*W, 3)
            ax.imshow(strip.cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    return fig


def write_sample_run(root, images: torch.Tensor, settings: dict, figure) -> Path:
    """A numbered run folder ``root/NNN-sample/`` with grid.png, images.npy ((R, C, B, H, W, 3) uint8) and
    settings.json (everything needed to re-run the grid); it appears only once all three are written."""
    buf = io.BytesIO()
    np.save(buf, (images.permute(0, 1, 2, 4, 5, 3) * 255).round().to(torch.uint8).cpu().numpy())
    with staged_run_dir(root, "sample") as staged:
        atomic_write_json(staged.path / "settings.json", settings)  # first: a value JSON refuses fails before work
        save_figure(figure, staged.path / "grid.png")
        atomic_write_bytes(staged.path / "images.npy", buf.getvalue())
    return staged.run_dir


def write_image_run(root, name: str, images: torch.Tensor, settings: dict, figure, *, exact: bool = False) -> Path:
    """grid.png and settings.json (a demo) in a new numbered run folder under `root`, or in `root` itself when
    `exact` (each file atomic there); never anywhere else."""
    if exact:
        atomic_write_json(Path(root) / "settings.json", settings)
        save_figure(figure, Path(root) / "grid.png")
        return Path(root)
    with staged_run_dir(root, name) as staged:
        atomic_write_json(staged.path / "settings.json", settings)
        save_figure(figure, staged.path / "grid.png")
    return staged.run_dir
