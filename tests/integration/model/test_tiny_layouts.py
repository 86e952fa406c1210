"""Every layout the real weights are published in loads and draws through the command line: tiny twins as single
files under each DiT key prefix, as the diffusers folder and as a ComfyUI install (issue 13: the CLI on each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anima_probe.cli import main
from anima_probe.model.tiny import write_tiny_layout

CASES = [("single-file", "net."), ("single-file", "model.diffusion_model."), ("single-file", "none"),
         ("diffusers", "net."), ("comfyui", "net.")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo grid of the single-file twin (net. prefix): every layout holds the same weights."""
    root = tmp_path_factory.mktemp("ref")
    model = write_tiny_layout(root / "m", "single-file", "net.")
    assert main(["demo", "--model", str(model), "--steps", "2", "--size", "16", "--prompts", "1girl|scenery",
                 "--out", str(root / "out"), "--quiet"]) == 0
    return np.asarray(Image.open(root / "out" / "grid.png"))


@pytest.mark.parametrize("layout,prefix", CASES)
def test_demo_draws_the_same_grid_from_every_published_layout(layout, prefix, reference, tmp_path):
    assert main(["tiny", str(tmp_path / "m"), "--layout", layout, "--prefix", prefix]) == 0
    out = tmp_path / "out"
    assert main(["demo", "--model", str(tmp_path / "m"), "--steps", "2", "--size", "16", "--prompts",
                 "1girl|scenery", "--out", str(out), "--quiet"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["steps"] == 2 and settings["model"]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == reference.shape
    assert np.abs(grid.astype(int) - reference.astype(int)).max() <= 2  # same weights, same images
