"""The regression gate: each direction of movement, missing metrics, versions, strictness, updates."""

from __future__ import annotations

import json

import pytest
from fakes import fake_experiment

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


# ---------------------------------------------------------------- the tier-wide gate (anima_probe.pipeline.gate)

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


# ---------------------------------------------------------------- the gate catches real bugs (toy world)


def _gate_against_clean(name: str, clean: dict, observed: dict) -> dict[str, str]:
    """Statuses of `observed` vs a clean run of the same small config, with the committed toy tolerances."""
    from anima_probe.pipeline.baselines import baseline_path

    base = load_baseline(baseline_path("toy", name))
    stated = {"experiment": name, "version": base["version"],
              "metrics": {k: {**e, "value": clean[k]} for k, e in base["metrics"].items() if k in clean}}
    return {c.key: c.status for c in compare(observed, base["version"], stated, name)}


@pytest.fixture(scope="module")
def toy():
    from anima_probe.model.anima import load_anima
    from anima_probe.pipeline.experiment import discover

    return load_anima(with_vae=False), discover()


def _metrics(name, overrides, toy, tmp_path, tag):
    from anima_probe.pipeline.experiment import run
    from anima_probe.pipeline.runs import read_run

    anima, registry = toy
    # A cache per run: pooled vectors cached by the clean run would hide a pooling bug from the second.
    run_dir = run(name, overrides, anima=anima, results=tmp_path / "results", cache_dir=tmp_path / f"cache-{tag}",
                  progress=False, registry=registry)
    return read_run(run_dir).metrics


@pytest.mark.slow  # about 15 s of CPU: two small pooling-nmi runs, each encoding its captions afresh
def test_gate_catches_max_and_mean_pooling_swapped(toy, tmp_path, monkeypatch):
    import csv

    from anima_probe.pipeline.runs import REPO_ROOT
    from anima_probe.probes import pooling

    rows = list(csv.DictReader(open(REPO_ROOT / "data/manifests/toyworld_captions.csv", encoding="utf-8")))
    artists = sorted({r["artist"] for r in rows})[:4]
    subset = [r for a in artists for r in [r for r in rows if r["artist"] == a][:12]]  # 48 captions, 4 artists
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(subset)
    small = {"manifest": str(tmp_path / "captions.csv"), "kmeans_seeds": 1, "n_init": 2, "n_half": 2,
             "n_perm": 10, "ablation": False}
    clean = _metrics("pooling-nmi", small, toy, tmp_path, "clean")
    for name, (op, over) in list(pooling.STRATEGIES.items()):
        if op in ("max", "mean"):
            monkeypatch.setitem(pooling.STRATEGIES, name, ("mean" if op == "max" else "max", over))
    status = _gate_against_clean("pooling-nmi", clean, _metrics("pooling-nmi", small, toy, tmp_path, "bug"))
    # On the toy model mean pooling of crossattn_emb clusters artists better than max: the swap drops the
    # mean_* keys (regressed) and lifts the max_* keys (improved: fails with --strict); EOS is untouched.
    assert status["nmi/crossattn_emb/mean_padded"] == status["nmi/crossattn_emb/mean_tokens"] == "regressed"
    assert status["nmi/crossattn_emb/max_padded"] == status["nmi/crossattn_emb/max_tokens"] == "improved"
    assert status["nmi/crossattn_emb/eos"] == status["nmi/prompt_embeds/eos"] == "ok"


def test_gate_catches_a_halved_injection_delta(toy, tmp_path, monkeypatch):
    from anima_probe.probes import hooks
    from anima_probe.probes import sensitivity as injection

    small = {"n_prompts": 2, "noise_seeds": 1, "sigmas": (0.5,), "alphas": (2.0, 4.0, 8.0), "latent_size": 16,
             "n_boot": 200}  # 2 prompts: the fewest a cluster bootstrap takes
    clean = _metrics("injection-mse", small, toy, tmp_path, "clean")
    monkeypatch.setattr(injection, "add_vector", lambda vec, alpha: hooks.add_vector(vec, 0.5 * alpha))
    status = _gate_against_clean("injection-mse", clean, _metrics("injection-mse", small, toy, tmp_path, "bug"))
    # Halving alpha shifts every curve one octave: after-norm MSE at alpha 4 falls ~8x (regressed) and the
    # 4 -> 8 growth jumps (flagged). The measured tolerances of the other MSE keys are wide (the seed also
    # draws the random projection, so MSE varies ~100 % across seeds) and let smaller moves pass: the gate
    # is only as sharp as the experiment's own seed spread.
    assert status["mse/after_norm/alpha_4"] == "regressed"
    assert status["growth_4_to_8/after_norm"] == "improved"
