"""`anima-probe report`: stale experiments rerun, notebooks executed headless on the project kernel, the
committed notebooks clean and covering every experiment."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from fakes import fake_registry

from anima_probe.pipeline.experiment import discover
from anima_probe.pipeline.notebooks import KERNEL
from anima_probe.pipeline.report import NOTEBOOKS_DIR, generate
from anima_probe.pipeline.report_file import read_meta
from anima_probe.pipeline.rundirs import resolve_latest

NOTEBOOK_CODE = '''
import sys
from anima_probe.pipeline.report_file import write_report
from anima_probe.pipeline.runs import read_run
assert sys.executable == {exe!r}, sys.executable  # the project's kernel: this interpreter
record = read_run(run_dir)
assert record.metrics["score"] == {score}
write_report("fake", run_dir, title="Fake", sections=[f"score {{record.metrics['score']}}"], question="q?",
             headline=[f"score {{record.metrics['score']}}"], notebook="fake.ipynb", reports_dir=reports_dir,
             command=command)
'''


def _notebook(path: Path, score: float) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('run_dir = None\nreports_dir = "reports"\ncommand = "x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Fake"), params,
                nbformat.v4.new_code_cell(NOTEBOOK_CODE.format(score=score, exe=sys.executable))]
    nbformat.write(nb, path)


def test_generate_runs_stale_experiments_and_executes_notebooks_headless(tmp_path):
    registry, anima = fake_registry(tmp_path)
    notebooks, results, reports = tmp_path / "nb", tmp_path / "results", tmp_path / "reports"
    notebooks.mkdir()
    _notebook(notebooks / "fake.ipynb", 0.5)
    executed = generate(results=results, reports_dir=reports, notebooks_dir=notebooks, registry=registry,
                        anima=anima, progress=False, log=lambda _: None, command="anima-probe report")
    assert resolve_latest(results, "fake") is not None  # the experiment was stale (never run) and ran
    assert read_meta(reports / "fake.md")["metrics"]["score"] == 0.5
    assert "score 0.5" in (reports / "README.md").read_text()
    out = nbformat.read(executed[0], as_version=4)
    assert out.metadata.papermill.parameters["run_dir"] == str(resolve_latest(results, "fake"))
    _notebook(notebooks / "fake.ipynb", 0.25)  # a notebook whose assertion fails
    with pytest.raises(RuntimeError, match=r"fake.ipynb failed in cell .*AssertionError"):
        generate(results=results, reports_dir=reports, notebooks_dir=notebooks, registry=registry, anima=anima,
                 progress=False, log=lambda _: None)


# ---------------------------------------------------------------- the committed notebooks, reports, baselines


def test_notebooks_are_committed_clean_and_cover_every_experiment():
    import papermill

    registry = discover()
    paths = {p.stem: p for p in NOTEBOOKS_DIR.glob("*.ipynb")}
    assert set(registry) <= set(paths), f"experiments without a notebook: {sorted(set(registry) - set(paths))}"
    for name, path in paths.items():
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == KERNEL, path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path}: needs exactly one cell tagged 'parameters'"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path}: commit without outputs"
        assert nb.cells[0].cell_type == "markdown" and "**Question.**" in nb.cells[0].source, path
        declared = papermill.inspect_notebook(str(path))
        assert {"reports_dir", "command"} <= set(declared), path
        if name in registry:
            assert "run_dir" in declared, f"{path}: an experiment notebook takes run_dir"
