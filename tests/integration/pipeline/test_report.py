"""Reports: the staleness rule, report files and their index, notebook hygiene and headless execution, and
the committed reports / baselines against what the code produces now."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from fakes import fake_experiment

from anima_probe.pipeline.baselines import baseline_path, gate
from anima_probe.pipeline.experiment import discover
from anima_probe.pipeline.freshness import STAMP, default_config, ensure_fresh, source_fingerprint, staleness
from anima_probe.pipeline.report import (
    KERNEL,
    NOTEBOOKS_DIR,
    check_committed,
    generate,
    performance_ratios,
    performance_targets,
    read_meta,
    write_index,
    write_report,
)
from anima_probe.pipeline.runs import ResultRecord, new_figure, read_run, resolve_latest, write_run


def _fake(tmp_path: Path, version: str = "1"):
    """A one-file experiment registry, a model file and a stand-in for a loaded model (no weights needed)."""
    (tmp_path / "experiments").mkdir(exist_ok=True)
    (tmp_path / "experiments" / "fake.py").write_text(fake_experiment(version))
    (tmp_path / "anima_probe").mkdir(exist_ok=True)
    (tmp_path / "anima_probe" / "mod.py").write_text("X = 1\n")
    model_file = tmp_path / "dit.safetensors"
    if not model_file.exists():
        model_file.write_bytes(b"weights v1")
    anima = SimpleNamespace(name="fake-model", files={"dit": model_file}, device="cpu")
    return discover(tmp_path / "experiments"), anima


def _fresh(tmp_path, registry, anima, results, **kw):
    return ensure_fresh(["fake"], registry, anima, results, progress=False, log=lambda _: None, root=tmp_path, **kw)


def _files(anima) -> dict[str, str]:
    from anima_probe.pipeline.experiment import model_record

    return model_record(anima)["files"]


def test_staleness_rule_each_reason(tmp_path):
    registry, anima = _fake(tmp_path)
    exp, results = registry["fake"], tmp_path / "results"
    assert staleness(exp, results, _files(anima), root=tmp_path) == [f"no run of fake under {results}"]
    first = _fresh(tmp_path, registry, anima, results)["fake"]
    assert staleness(exp, results, _files(anima), root=tmp_path) == []
    assert _fresh(tmp_path, registry, anima, results)["fake"] == first  # fresh: reused, not rerun

    registry2, _ = _fake(tmp_path, version="2")  # experiment version
    assert "version 1 -> 2" in staleness(registry2["fake"], results, _files(anima), root=tmp_path)[0]
    _fake(tmp_path)  # the version-1 file again
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

    registry, anima = _fake(tmp_path)
    results = tmp_path / "results"
    run("fake", ["n=5"], anima=anima, results=results, progress=False, registry=registry)
    reasons = staleness(registry["fake"], results, _files(anima), root=tmp_path)
    assert reasons[0] == "config differs from the defaults in ['n']"
    fresh = _fresh(tmp_path, registry, anima, results)["fake"]
    assert read_run(fresh).config == default_config(registry["fake"]) == {"seed": 0, "n": 3}
    assert read_run(fresh).metrics == {"score": 0.5, "err": 4.0}


def test_source_fingerprint_follows_content_not_mtime(tmp_path):
    registry, _ = _fake(tmp_path)
    exp, before = registry["fake"], source_fingerprint(registry["fake"], tmp_path)
    os.utime(tmp_path / "experiments" / "fake.py", (1, 1))
    assert source_fingerprint(exp, tmp_path) == before
    (tmp_path / "experiments" / "fake.py").write_text(fake_experiment() + "# edit\n")
    assert source_fingerprint(exp, tmp_path) != before


def _record(metrics: dict[str, float], name: str = "fake", dit: str = "a" * 64) -> ResultRecord:
    return ResultRecord(name, "1", {"seed": 0}, metrics, {k: True for k in metrics}, git_hash="0123abcd",
                        model={"name": "fake-model", "files": {"dit": dit}}, env={"device": "cpu", "torch": "x"})


def test_write_report_header_meta_figures_and_index(tmp_path):
    run_dir = write_run(tmp_path / "results", _record({"acc": 0.75, "gap": 2.5}))
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
    (reports / "notes.md").write_text("# hand written, no metadata\n")
    index = write_index(reports).read_text()
    assert "| [A fake report](fake-report.md) | Why? | acc 0.75 |" in index
    assert "notes.md" not in index and "Generated - do not edit" in index


def test_damaged_meta_names_the_file(tmp_path):
    path = tmp_path / "x.md"
    path.write_text('<!-- anima-probe:report {"broken": } -->\n')
    with pytest.raises(ValueError, match=r"x.md: damaged anima-probe:report comment"):
        read_meta(path)


def test_check_committed_within_tolerance_moved_and_other_model(tmp_path):
    base = {"experiment": "fake", "version": "1", "metrics": {
        "acc": {"value": 0.0, "abs_tol": 0.02, "rel_tol": 0.0, "higher_is_better": True, "tolerance_source": "t"}}}
    path = baseline_path("toy", "fake", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(base))
    committed = write_run(tmp_path / "old", _record({"acc": 0.80}))
    write_report("fake", committed, title="t", sections=[], question="q", notebook="n", reports_dir=tmp_path / "r")
    results = tmp_path / "results"
    write_run(results, _record({"acc": 0.81}))  # within 0.02 of what the report states
    assert [c.status for c in check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"]] == ["ok"]
    write_run(results, _record({"acc": 0.70}))
    checks = check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"]
    assert [(c.key, c.status) for c in checks] == [("acc", "regressed")] and gate(checks) == 1
    write_run(results, _record({"acc": 0.80}, dit="b" * 64))
    assert check_committed(tmp_path / "r", results, "toy", tmp_path)["fake.md"][0].status == "model-mismatch"


def test_performance_ratios_and_targets(tmp_path):
    path = tmp_path / "performance.md"
    path.write_text(textwrap.dedent("""\
        # Performance
        <!-- begin:bench -->
        Generated by `python benchmarks/bench.py`.
        ## Speed
        | what | a | b | a / b (target >= 2x) |
        |---|---|---|---|
        | thing | 1 s | 3 s | 0.33x (NOT met) |
        | other | 4 s | 1 s | 4x (met) |

        Overall: target met. Not a ratio: 12 s.

        **bigger model**

        | what | ratio |
        |---|---|
        | thing | **2.5x** |
        <!-- end:bench -->
        <!-- begin:summary -->
        | section | ratio |
        |---|---|
        | bench | 0.33x |
        <!-- end:summary -->
        """))
    ratios = performance_ratios(path)
    assert [(r["row"], r["value"], r["command"], r["table"]) for r in ratios] == [
        ("thing", 0.33, "python benchmarks/bench.py", "Speed"), ("other", 4.0, "python benchmarks/bench.py", "Speed"),
        ("thing", 2.5, "python benchmarks/bench.py", "Speed: bigger model")]  # not the summary's own rows
    assert performance_targets(path) == [("bench", "thing: 0.33x (NOT met)"), ("bench", "other: 4x (met)"),
                                         ("bench", "Overall: target met.")]


NOTEBOOK_CODE = '''
import sys
from anima_probe.pipeline.report import load_run, write_report
assert sys.executable == {exe!r}, sys.executable  # the project's kernel: this interpreter
record = load_run(run_dir)
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
    registry, anima = _fake(tmp_path)
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






# ---------------------------------------------------------------- GPU machines (skipped where there is no CUDA)




