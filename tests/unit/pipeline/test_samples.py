"""Sample grids: the figure lays out rows x columns, the run folder holds the grid, the uint8 images and the settings."""

from __future__ import annotations

import json

import numpy as np
import torch

from anima_probe.pipeline.samples import grid_figure, write_sample_run


def test_sample_run_folder_holds_grid_images_and_settings(tmp_path):
    images = torch.rand(2, 3, 2, 3, 4, 4)  # (R, C, B, 3, H, W)
    fig = grid_figure(images, ["off", "w=3"], ["cfg 1", "cfg 4", "cfg 7"])
    run = write_sample_run(tmp_path, images, {"w": ["off", 3.0]}, fig)
    again = write_sample_run(tmp_path, images, {"w": ["off", 3.0]}, fig)
    assert run.name == "000-sample" and again.name == "001-sample"
    saved = np.load(run / "images.npy")
    assert saved.shape == (2, 3, 2, 4, 4, 3) and saved.dtype == np.uint8
    assert np.array_equal(saved, (images.permute(0, 1, 2, 4, 5, 3) * 255).round().byte().numpy())
    assert json.loads((run / "settings.json").read_text()) == {"w": ["off", 3.0]}
    assert (run / "grid.png").stat().st_size > 0
