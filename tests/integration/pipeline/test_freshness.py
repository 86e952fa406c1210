"""The staleness rule: each of its reasons, reruns with the defaults, a fingerprint of content not mtimes."""

from __future__ import annotations

import os

from fakes import fake_experiment, fake_registry

from anima_probe.pipeline.experiment import ensure_fresh, model_record
from anima_probe.pipeline.freshness import STAMP, default_config, source_fingerprint, staleness
from anima_probe.pipeline.runs import read_run


def _fresh(tmp_path, registry, anima, results, **kw):
    return ensure_fresh(["fake"], registry, anima, results, progress=False, log=lambda _: None, root=tmp_path, **kw)


def _files(anima) -> dict[str, str]:
    return model_record(anima)["files"]


def test_staleness_rule_each_reason(tmp_path):
    registry, anima = fake_registry(tmp_path)
    exp, results = registry["fake"], tmp_path / "results"
    assert staleness(exp, results, _files(anima), root=tmp_path) == [f"no run of fake under {results}"]
    first = _fresh(tmp_path, registry, anima, results)["fake"]
    assert staleness(exp, results, _files(anima), root=tmp_path) == []
    assert _fresh(tmp_path, registry, anima, results)["fake"] == first  # fresh: reused, not rerun

    registry2, _ = fake_registry(tmp_path, version="2")  # experiment version
    assert "version 1 -> 2" in staleness(registry2["fake"], results, _files(anima), root=tmp_path)[0]
    fake_registry(tmp_path)  # the version-1 file again
    (tmp_path / "anima_probe" / "mod.py").write_text("X = 2\n")  # package source
    assert staleness(exp, results, _files(anima), root=tmp_path) == ["source changed since the run"]
    (tmp_path / "anima_probe" / "mod.py").write_text("X = 1\n")  # back to the same content: fresh again
    assert staleness(exp, results, _files(anima), root=tmp_path) == []
    anima.files["dit"].write_bytes(b"weights v2")  # model file
    assert staleness(exp, results, _files(anima), root=tmp_path) == ["model files differ (run: fake-model)"]
    anima.files["dit"].write_bytes(b"weights v1")
    (first / STAMP).unlink()  # a run made without a stamp (e.g. by an older checkout)
    assert staleness(exp, results, _files(anima), root=tmp_path) == [f"no {STAMP} source stamp"]


def test_a_run_with_overrides_is_stale_and_gets_rerun_with_defaults(tmp_path):
    from anima_probe.pipeline.experiment import run

    registry, anima = fake_registry(tmp_path)
    results = tmp_path / "results"
    run("fake", ["n=5"], anima=anima, results=results, progress=False, registry=registry)
    reasons = staleness(registry["fake"], results, _files(anima), root=tmp_path)
    assert reasons[0] == "config differs from the defaults in ['n']"
    fresh = _fresh(tmp_path, registry, anima, results)["fake"]
    assert read_run(fresh).config == default_config(registry["fake"]) == {"seed": 0, "n": 3}
    assert read_run(fresh).metrics == {"score": 0.5, "err": 4.0}


def test_source_fingerprint_follows_content_not_mtime(tmp_path):
    registry, _ = fake_registry(tmp_path)
    exp, before = registry["fake"], source_fingerprint(registry["fake"], tmp_path)
    os.utime(tmp_path / "experiments" / "fake.py", (1, 1))
    assert source_fingerprint(exp, tmp_path) == before
    (tmp_path / "experiments" / "fake.py").write_text(fake_experiment() + "# edit\n")
    assert source_fingerprint(exp, tmp_path) != before
