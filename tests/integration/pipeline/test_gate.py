"""The tier-wide gate (`anima-probe regress`): measured tolerances, every failing status, --strict, --update."""

from __future__ import annotations

import pytest
from fakes import fake_experiment

from anima_probe.pipeline.baselines import load_baseline, save_baseline


def _status(checks) -> dict[str, str]:
    return {c.key: c.status for c in checks}


@pytest.fixture
def fake(tmp_path):
    """(registry, stand-in model, results dir, repo root) for one seed-dependent fake experiment."""
    from types import SimpleNamespace

    from anima_probe.pipeline.experiment import discover

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "fake.py").write_text(fake_experiment())
    (tmp_path / "dit.safetensors").write_bytes(b"weights")
    anima = SimpleNamespace(name="fake-model", files={"dit": tmp_path / "dit.safetensors"}, device="cpu")
    return discover(tmp_path / "experiments"), anima, tmp_path / "results", tmp_path


def _cli(argv, fake, capsys) -> tuple[int, str]:
    import argparse

    from anima_probe.pipeline import gate as tier_gate

    parser = argparse.ArgumentParser()
    tier_gate.add_arguments(parser)
    registry, _, results, root = fake
    code = tier_gate.cli(parser.parse_args([*argv, "--results", str(results)]), root=root, registry=registry)
    return code, capsys.readouterr().out


def test_measured_tolerance_is_3_sd_over_seeds_with_a_floor(fake):
    from anima_probe.pipeline.gate import measure_tolerances

    registry, anima, results, root = fake
    path = measure_tolerances("fake", "toy", results, anima=anima, registry=registry, seeds=5, root=root, log=print)
    base = load_baseline(path)
    score, err = base["metrics"]["score"], base["metrics"]["err"]
    # score over seeds 0..4 is 0.50..0.54: sample sd 0.01 * sqrt(2.5)
    assert score["value"] == 0.5 and score["abs_tol"] == pytest.approx(3 * 0.01 * 2.5**0.5)
    assert score["tolerance_source"].startswith("3 sd over seeds 0..4 (sd 0.0158)")
    assert err["value"] == 4.0 and err["abs_tol"] == 1e-6 and err["rel_tol"] == 0.02  # no seed moves it: floor
    assert base["config"] == {"seed": 0, "n": 3} and base["model"]["name"] == "fake-model"
    assert base["measured"]["seeds"] == [0, 1, 2, 3, 4]
    runs = sorted((results / "tolerance-runs").glob("0*-fake"))
    assert len(runs) == 4
    log = []
    measure_tolerances("fake", "toy", results, anima=anima, registry=registry, seeds=5, root=root, log=log.append)
    assert sorted((results / "tolerance-runs").glob("0*-fake")) == runs  # resumed: every seed run reused
    assert log[-1] == f"fake: seed=4 reused from {runs[-1].name}"
    assert load_baseline(path)["metrics"]["score"]["abs_tol"] == score["abs_tol"]


def test_tier_cli_passes_then_flags_improvement_and_fails_strict(fake, capsys):
    from anima_probe.pipeline.gate import measure_tolerances

    registry, anima, results, root = fake
    measure_tolerances("fake", "toy", results, anima=anima, registry=registry, seeds=2, root=root, log=print)
    code, out = _cli([], fake, capsys)
    assert code == 0 and "regression gate, tier toy: passed (1 experiments)" in out
    path = root / "reports/baselines/toy/fake.json"
    base = load_baseline(path)
    base["metrics"]["score"]["value"] = 0.4  # the run now scores 0.5: better than the baseline by 0.1
    save_baseline(path, base)
    code, out = _cli([], fake, capsys)
    assert code == 0 and "improved" in out and "accept it on purpose with --update" in out
    assert _cli(["--strict"], fake, capsys)[0] == 1


def test_tier_cli_fails_on_stale_version_missing_metric_model_and_config(fake, capsys):
    from anima_probe.pipeline.experiment import run
    from anima_probe.pipeline.gate import measure_tolerances

    registry, anima, results, root = fake
    measure_tolerances("fake", "toy", results, anima=anima, registry=registry, seeds=2, root=root, log=print)
    path = root / "reports/baselines/toy/fake.json"
    good = load_baseline(path)
    save_baseline(path, good | {"version": "0"})  # a baseline recorded for an older experiment version
    code, out = _cli([], fake, capsys)
    assert code == 1 and "version-mismatch" in out and "baseline version 0, run version 1" in out
    extra = {"value": 1.0, "abs_tol": 0.1, "rel_tol": 0.0, "higher_is_better": True, "tolerance_source": "t"}
    save_baseline(path, good | {"metrics": good["metrics"] | {"gone": extra}})
    code, out = _cli([], fake, capsys)
    assert code == 1 and "missing  gone" in out
    save_baseline(path, good | {"model": {"name": "other", "files": {"dit": "0" * 64}}})
    code, out = _cli([], fake, capsys)
    assert code == 1 and "model-mismatch" in out and "files ['dit']" in out
    save_baseline(path, good)
    run("fake", ["n=5"], anima=anima, results=results, progress=False, registry=registry)  # latest: not defaults
    code, out = _cli([], fake, capsys)
    assert code == 1 and "config-mismatch" in out and "run config differs in ['n']" in out


def test_tier_cli_missing_baseline_and_missing_run_fail(fake, capsys):
    code, out = _cli([], fake, capsys)
    assert code == 1 and "record it with `anima-probe regress --tier toy --measure fake`" in out
    save_baseline(fake[3] / "reports/baselines/toy/fake.json",
                  {"experiment": "fake", "version": "1", "metrics": {}})
    code, out = _cli([], fake, capsys)
    assert code == 1 and "no run under" in out


def test_update_accepts_the_run_and_keeps_measured_tolerances(fake, capsys):
    from anima_probe.pipeline.experiment import run
    from anima_probe.pipeline.gate import measure_tolerances

    registry, anima, results, root = fake
    measure_tolerances("fake", "toy", results, anima=anima, registry=registry, seeds=3, root=root, log=print)
    before = load_baseline(root / "reports/baselines/toy/fake.json")
    run("fake", ["n=7"], anima=anima, results=results, progress=False, registry=registry)
    assert _cli(["--update"], fake, capsys)[0] == 0
    after = load_baseline(root / "reports/baselines/toy/fake.json")
    assert after["metrics"]["err"]["value"] == 8.0 and after["config"]["n"] == 7
    for key in ("score", "err"):
        for field in ("abs_tol", "rel_tol", "tolerance_source"):
            assert after["metrics"][key][field] == before["metrics"][key][field]
    assert _cli([], fake, capsys)[0] == 0
