"""A generated report: header, question, figures, metrics table and the metadata comment read back."""

from __future__ import annotations

import pytest
from fakes import fake_record

from anima_probe.pipeline.figures import new_figure
from anima_probe.pipeline.report_file import read_meta, write_report
from anima_probe.pipeline.runs import write_run


def test_write_report_header_meta_and_figures(tmp_path):
    run_dir = write_run(tmp_path / "results", fake_record({"acc": 0.75, "gap": 2.5}))
    (run_dir / "plot.png").write_bytes(b"not really a png")
    fig = new_figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    reports = tmp_path / "reports"
    path = write_report("fake-report", run_dir, title="A fake report", sections=["Some text."], question="Why?",
                        figures={"made": (fig, "made here"), "copied": (run_dir / "plot.png", "from the run")},
                        headline=["acc 0.75"], notebook="notebooks/fake.ipynb", reports_dir=reports)
    text = path.read_text()
    assert "**Generated - do not edit.**" in text and "`anima-probe report`" in text
    assert "code git `0123abcd`" in text and "Model `fake-model`" in text and f"dit `{'a' * 16}`" in text
    assert "![made here](figures/fake-report_made.png)" in text
    assert (reports / "figures/fake-report_copied.png").read_bytes() == b"not really a png"
    assert (reports / "figures/fake-report_made.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `acc` | 0.7500 | higher |" in text
    meta = read_meta(path)
    assert meta["metrics"] == {"acc": 0.75, "gap": 2.5} and meta["headline"] == ["acc 0.75"]


def test_damaged_meta_names_the_file(tmp_path):
    path = tmp_path / "x.md"
    path.write_text('<!-- anima-probe:report {"broken": } -->\n')
    with pytest.raises(ValueError, match=r"x.md: damaged anima-probe:report comment"):
        read_meta(path)
