"""How does a figure get drawn and saved without a display or pyplot's global state?

Experiments, notebooks, benchmarks and the trainers draw on a `new_figure` (matplotlib's object API on the Agg
canvas, safe in worker processes and headless kernels) and save it with `save_figure`, which renders in memory
and writes the file atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from anima_probe.pipeline.atomic import atomic_write_bytes


def new_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas: no pyplot global state, no GUI backend needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Render `fig` in memory (format from the suffix, default .png) and write it atomically."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
