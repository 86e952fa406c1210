"""Baselines: each direction of movement, missing metrics, versions, strictness, updates, file validation."""

from __future__ import annotations

import json

import pytest

from anima_probe.pipeline.baselines import (
    DEFAULT_SOURCE,
    compare,
    format_table,
    gate,
    load_baseline,
    main,
    save_baseline,
    tolerance,
    update_baseline,
)
from anima_probe.pipeline.runs import ResultRecord, write_run


def _baseline() -> dict:
    return {
        "experiment": "pooling-nmi",
        "version": "1",
        "metrics": {
            # higher is better, tolerance max(0.02, 0.0 * 0.9) = 0.02
            "nmi/max_padded": {"value": 0.9, "abs_tol": 0.02, "rel_tol": 0.0, "higher_is_better": True,
                               "tolerance_source": "3 sd over 5 seeds"},
            # lower is better, tolerance max(0.001, 0.1 * 0.5) = 0.05
            "mse/after_norm": {"value": 0.5, "abs_tol": 0.001, "rel_tol": 0.1, "higher_is_better": False,
                               "tolerance_source": "10% of value"},
        },
    }  # fmt: skip


def _status(checks) -> dict[str, str]:
    return {c.key: c.status for c in checks}


def test_tolerance_is_the_larger_of_abs_and_rel():
    entries = _baseline()["metrics"]
    assert tolerance(entries["nmi/max_padded"]) == pytest.approx(0.02)
    assert tolerance(entries["mse/after_norm"]) == pytest.approx(0.05)


def test_within_tolerance_is_ok_including_the_boundary():
    checks = compare({"nmi/max_padded": 0.92, "mse/after_norm": 0.46}, "1", _baseline())
    assert _status(checks) == {"nmi/max_padded": "ok", "mse/after_norm": "ok"}
    assert gate(checks) == 0 and gate(checks, strict=True) == 0


def test_regression_in_each_direction():
    # NMI fell (higher is better) and MSE rose (lower is better): both are regressions.
    checks = compare({"nmi/max_padded": 0.85, "mse/after_norm": 0.6}, "1", _baseline())
    assert _status(checks) == {"nmi/max_padded": "regressed", "mse/after_norm": "regressed"}
    assert gate(checks) == 1


def test_improvement_in_each_direction_fails_only_with_strict():
    checks = compare({"nmi/max_padded": 0.95, "mse/after_norm": 0.4}, 1, _baseline())
    assert _status(checks) == {"nmi/max_padded": "improved", "mse/after_norm": "improved"}
    assert gate(checks) == 0
    assert gate(checks, strict=True) == 1


def test_missing_metric_fails_and_new_metric_does_not():
    checks = compare({"nmi/max_padded": 0.9, "nmi/eos": 0.1}, "1", _baseline())
    assert _status(checks) == {"nmi/max_padded": "ok", "mse/after_norm": "missing", "nmi/eos": "new"}
    assert gate(checks) == 1
    assert gate([c for c in checks if c.status != "missing"], strict=True) == 0


def test_non_finite_observation_is_a_regression():
    checks = compare({"nmi/max_padded": float("nan"), "mse/after_norm": 0.5}, "1", _baseline())
    assert _status(checks)["nmi/max_padded"] == "regressed"


def test_version_mismatch_is_one_failing_check():
    checks = compare({"nmi/max_padded": 0.9, "mse/after_norm": 0.5}, "2", _baseline())
    assert [(c.key, c.status) for c in checks] == [("version", "version-mismatch")]
    assert "baseline version 1, run version 2" in checks[0].detail
    assert gate(checks) == 1


def test_wrong_experiment_is_an_error():
    with pytest.raises(ValueError, match="run is 'other' but the baseline is for 'pooling-nmi'"):
        compare({}, "1", _baseline(), record_experiment="other")


def test_format_table_lists_every_check_and_counts():
    checks = compare({"nmi/max_padded": 0.85, "nmi/eos": 0.1}, "1", _baseline())
    table = format_table(checks)
    lines = table.splitlines()
    assert lines[0].split() == ["status", "metric", "baseline", "observed", "tolerance", "detail"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:5] == ["regressed", "nmi/max_padded", "0.9", "0.85", "0.02"]
    assert lines[3].split()[:4] == ["missing", "mse/after_norm", "0.5", "-"]
    assert lines[-1] == "1 new, 1 regressed, 1 missing"


def test_update_keeps_tolerances_and_flags_new_defaults():
    base = _baseline()
    new = update_baseline(base, {"nmi/max_padded": 0.8, "nmi/eos": 0.2}, "2", {"nmi/eos": True})
    assert new["version"] == "2"
    kept = new["metrics"]["nmi/max_padded"]
    assert kept["value"] == 0.8
    assert (kept["abs_tol"], kept["rel_tol"], kept["tolerance_source"]) == (0.02, 0.0, "3 sd over 5 seeds")
    assert new["metrics"]["mse/after_norm"] == base["metrics"]["mse/after_norm"]  # absent: kept by default
    assert new["metrics"]["nmi/eos"]["tolerance_source"] == DEFAULT_SOURCE
    assert new["metrics"]["nmi/eos"]["higher_is_better"] is True
    assert base["metrics"]["nmi/max_padded"]["value"] == 0.9  # the input is not mutated
    assert list(new) == ["experiment", "version", "metrics"]  # stable order keeps baseline diffs small
    assert list(new["metrics"]["nmi/eos"]) == [
        "value",
        "abs_tol",
        "rel_tol",
        "higher_is_better",
        "tolerance_source",
    ]
    dropped = update_baseline(base, {"nmi/max_padded": 0.8}, "2", drop_missing=True)
    assert set(dropped["metrics"]) == {"nmi/max_padded"}


def test_update_needs_direction_for_new_metrics():
    with pytest.raises(ValueError, match="new metric 'nmi/eos' needs a higher_is_better"):
        update_baseline(_baseline(), {"nmi/eos": 0.2}, "1")


def test_baseline_file_validation_names_file_and_key(tmp_path):
    path = tmp_path / "b.json"
    save_baseline(path, _baseline())
    assert load_baseline(path) == _baseline()
    broken = _baseline()
    del broken["metrics"]["mse/after_norm"]["tolerance_source"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"b.json: metric 'mse/after_norm' lacks \['tolerance_source'\]"):
        load_baseline(path)
    path.write_text("{\n  oops")
    with pytest.raises(ValueError, match=r"b.json:2: not valid JSON"):
        load_baseline(path)


def test_cli_update_then_check_then_regress(tmp_path, capsys):
    def run(nmi: float):
        rec = ResultRecord("pooling-nmi", "1", {}, {"nmi/max_padded": nmi}, {"nmi/max_padded": True})
        return write_run(tmp_path / "results", rec)

    baseline = tmp_path / "quick" / "pooling-nmi.json"
    assert main([str(run(0.9)), "--baseline", str(baseline), "--update"]) == 0
    assert load_baseline(baseline)["metrics"]["nmi/max_padded"]["value"] == 0.9
    assert main([str(run(0.9) / "metrics.json"), "--baseline", str(baseline)]) == 0
    assert main([str(run(0.5)), "--baseline", str(baseline)]) == 1  # default rel_tol 5% of 0.9
    assert "regressed" in capsys.readouterr().out
