"""Figures drawn without pyplot are saved atomically in the format their suffix names."""

from __future__ import annotations

from anima_probe.pipeline.figures import new_figure, save_figure


def test_save_figure_writes_png(tmp_path):
    fig = new_figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve")
    assert path.name == "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
