"""The reports index and the check of the committed reports against the latest runs."""

from __future__ import annotations

import json

from fakes import fake_record

from anima_probe.pipeline.baselines import baseline_path, gate
from anima_probe.pipeline.report_file import write_report
from anima_probe.pipeline.report_index import check_committed, write_index
from anima_probe.pipeline.runs import write_run


def test_index_lists_generated_reports_with_their_headline_and_skips_hand_written_files(tmp_path):
    run_dir = write_run(tmp_path / "results", fake_record({"acc": 0.75}))
    reports = tmp_path / "reports"
    write_report("fake-report", run_dir, title="A fake report", sections=[], question="Why?", headline=["acc 0.75"],
                 notebook="notebooks/fake.ipynb", reports_dir=reports)
    (reports / "notes.md").write_text("# hand written, no metadata\n")
    index = write_index(reports).read_text()
    assert "| [A fake report](fake-report.md) | Why? | acc 0.75 |" in index
    assert "notes.md" not in index and "Generated - do not edit" in index


def test_check_committed_within_tolerance_moved_and_other_model(tmp_path):
    base = {"experiment": "fake", "version": "1", "metrics": {
        "acc": {"value": 0.0, "abs_tol": 0.02, "rel_tol": 0.0, "higher_is_better": True, "tolerance_source": "t"}}}
    path = baseline_path("toy", "fake", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(base))
    committed = write_run(tmp_path / "old", fake_record({"acc": 0.80}))
    write_report("fake", committed, title="t", sections=[], question="q", notebook="n", reports_dir=tmp_path / "r")
    results = tmp_path / "results"
    write_run(results, fake_record({"acc": 0.81}))  # within 0.02 of what the report states
    assert [c.status for c in check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"]] == ["ok"]
    write_run(results, fake_record({"acc": 0.70}))
    checks = check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"]
    assert [(c.key, c.status) for c in checks] == [("acc", "regressed")] and gate(checks) == 1
    write_run(results, fake_record({"acc": 0.80}, dit="b" * 64))
    assert check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"][0].status == "model-mismatch"
