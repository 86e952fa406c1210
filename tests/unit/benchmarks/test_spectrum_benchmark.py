"""benchmarks/spectrum.py: its record from known measurements (forwards saved, speed-ups, the control ratio), and
its conditions on the tiny twin (forwards counted, the control has as many steps as FAST has real forwards)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from anima_probe.pipeline.benchmark_records import BenchmarkRecord
from anima_probe.pipeline.provenance import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("spectrum_benchmark", REPO_ROOT / "benchmarks" / "spectrum.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _row(forwards, err, cpu_ratio):
    return {"forwards": forwards, "rel_l2": err, "pixel_mae": err / 2, "cpu_s": 10 * cpu_ratio, "wall_s": 12.0,
            "cpu_ratio": cpu_ratio, "wall_ratio": 1.0}


def test_record_from_known_measurements():
    res = {"full, 28 steps": _row(28, 0.0, 1.0), "Spectrum, facts-sheet defaults": _row(16, 0.03, 0.6),
           "Spectrum FAST": _row(11, 0.08, 0.5), "plain Euler, 11 steps (control)": _row(11, 0.16, 0.4)}
    record = bench.to_record(res, 3, {"cores": 2}, date="2026-12-01", git_hash="0" * 40)
    ratios = {r.label: r for r in record.ratios}
    saved = ratios["Spectrum FAST: DiT forwards saved at 28 steps"]
    assert saved.value == pytest.approx(28 / 11) and saved.met
    assert ratios["Spectrum FAST: CPU-time speed-up"].value == pytest.approx(2.0)
    assert ratios["Spectrum FAST: pixel error / that of plain Euler at equal forwards"].value == pytest.approx(0.5)
    assert record.tables[0].rows[1][2] == pytest.approx(28 / 16)
    assert BenchmarkRecord.from_dict(record.to_dict()) == record


def test_conditions_count_forwards_on_the_tiny_twin(tiny_anima):
    conds = bench.conditions(tiny_anima, ["1girl, solo", "scenery"])
    assert list(conds)[-1] == "plain Euler, 11 steps (control)"
    fast_run, fast_forwards = conds["Spectrum FAST"]
    x0 = fast_run()
    assert fast_forwards() == 11 and x0.shape[0] == 2
    assert conds["full, 28 steps"][1]() == 28
