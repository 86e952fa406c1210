"""toyworld-evidence on the shipped model, cut small: its run folder holds the grid, the p+/p- pairs and their scores."""

from __future__ import annotations

import csv

import pytest

from anima_probe.pipeline.experiment import run
from anima_probe.pipeline.runs import read_run

SMALL = {"artists": 2, "steps": 4, "classifier_images": 240, "pair_every": 4}


def test_small_evidence_run_writes_grid_pairs_and_consistent_metrics(tmp_path):
    out = run("toyworld-evidence", SMALL, results=tmp_path / "results", cache_dir=tmp_path / "cache", progress=False)
    m = read_run(out).metrics
    assert m["chance/artist"] == pytest.approx(0.5) and m["chance/content"] == pytest.approx(0.125)
    assert 0 <= m["accuracy/artist"] <= 1 and 0 <= m["accuracy/content"] <= 1
    with (out / "quality_pairs.csv").open() as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 2 * 8 // SMALL["pair_every"]  # every 4th cell of the 2 x 8 grid
    gaps = [float(p["score_plus"]) - float(p["score_minus"]) for p in pairs]
    assert m["quality/gap_mean"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-5)
    assert m["quality/p_plus_wins"] == pytest.approx(sum(g > 0 for g in gaps) / len(gaps))
    assert {"grid.png", "pairs.png"} <= {p.name for p in out.iterdir()}
