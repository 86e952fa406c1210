"""The committed reports and toy baselines against what the code produces now (the shipped toy world), and the
same checks on a GPU machine (skipped where there is no CUDA device)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from anima_probe.pipeline.baselines import DEFAULT_SOURCE, baseline_path, format_table, gate, load_baseline
from anima_probe.pipeline.experiment import discover
from anima_probe.pipeline.freshness import default_config
from anima_probe.pipeline.report import refresh
from anima_probe.pipeline.report_file import REPORTS_DIR, read_meta
from anima_probe.pipeline.report_index import check_committed
from anima_probe.pipeline.runs import read_run


def test_every_experiment_has_a_measured_toy_baseline_for_its_defaults():
    for name, exp in discover().items():
        path = baseline_path("toy", name)
        assert path.exists(), f"no {path}: run `anima-probe regress --tier toy --measure {name}`"
        base = load_baseline(path)
        assert base["version"] == exp.version, f"{path}: version {base['version']}, experiment {exp.version}"
        assert base["config"] == default_config(exp), f"{path}: recorded for another config; re-measure"
        assert base["model"]["name"] == "anima-toyworld", path
        for key, entry in base["metrics"].items():
            assert entry["tolerance_source"] != DEFAULT_SOURCE, f"{path}: {key} has an unmeasured tolerance"


# A replacement field as a notebook writes one: {name}, {name['key']}, {name.attr:.2f}; prose braces hold no such thing
_FIELD = re.compile(r"\{[A-Za-z_]\w*(?:\[[^\]]*\])*(?:\.\w+)*(?::[^{}\s]*)?\}")


def test_committed_reports_print_no_unformatted_field():
    """A notebook string that lost its f prefix prints its braces (reports/toyworld.md did until stop 22)."""
    found = [f"{path.relative_to(REPORTS_DIR)}:{i}: {m.group()}" for path in sorted(REPORTS_DIR.rglob("*.md"))
             for i, line in enumerate(path.read_text().splitlines(), 1) for m in _FIELD.finditer(line)]
    assert not found, found
    assert _FIELD.search("It trained {pc_train['steps']:,} steps") and not _FIELD.search("sigma in {0.1, 0.4}")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Where the runs go: $ANIMA_PROBE_RESULTS (CI points it at the scratch folder its `anima-probe report` just
    filled, so those fresh runs are reused), else a temporary folder. No test writes into the checkout."""
    return Path(os.environ.get("ANIMA_PROBE_RESULTS") or tmp_path_factory.mktemp("results"))


@pytest.mark.slow
def test_committed_reports_match_what_the_code_produces_now(results):
    """Reruns every stale experiment on the toy world (fresh runs in $ANIMA_PROBE_RESULTS are reused) and
    compares the metrics each committed report states with them, within the toy baselines' tolerances."""
    refresh(results=results, progress=False, log=lambda _: None)
    checks = check_committed(REPORTS_DIR, results, "toy")
    reported = {read_meta(REPORTS_DIR / name)["experiment"] for name in checks}
    assert reported == set(discover()), f"experiments without a committed report: {set(discover()) - reported}"
    failing = {name: format_table(c) for name, c in checks.items() if gate(c)}
    assert not failing, "committed reports are out of date; run `make reports`:\n" + "\n".join(
        f"{k}\n{v}" for k, v in failing.items())


@pytest.mark.gpu
def test_toyworld_evidence_on_cuda_still_recognises_artists(tmp_path):
    import torch

    from anima_probe.model.anima import load_anima
    from anima_probe.pipeline.experiment import run

    anima = load_anima(device="cuda", dtype=torch.float32, with_vae=False)
    small = {"artists": 4, "classifier_images": 600, "steps": 12}
    run_dir = run("toyworld-evidence", small, anima=anima, results=tmp_path / "results", progress=False)
    m = read_run(run_dir).metrics
    assert m["accuracy/artist"] >= 3 * m["chance/artist"] and m["quality/gap_mean"] > 0


@pytest.mark.gpu
@pytest.mark.slow
def test_anima_tier_gate_on_the_real_weights(results):
    """On a GPU machine with the real files: ANIMA_MODEL_DIR=/path/to/models pytest -m gpu (see README)."""
    from anima_probe.pipeline.gate import check_tier, tier_names

    model = os.environ.get("ANIMA_MODEL_DIR")
    if not model:
        pytest.skip("set ANIMA_MODEL_DIR to the real Anima model folder to gate the anima tier")
    refresh(model, results=results / "anima", device="cuda", progress=False, log=lambda _: None)
    checks = check_tier("anima", results / "anima", tier_names("anima"))
    failing = {name: format_table(c) for name, c in checks.items() if gate(c)}
    assert not failing, "\n".join(f"{k}\n{v}" for k, v in failing.items())

