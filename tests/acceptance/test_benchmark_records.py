"""The committed benchmark records: one per script in benchmarks/, each naming the command that measures it again."""

from __future__ import annotations

import ast
import math

from anima_probe.pipeline.benchmark_records import RECORDS_DIR, read_records
from anima_probe.pipeline.provenance import REPO_ROOT


def _command_of(script) -> str:
    """The script's COMMAND constant, read without running (importing) the script."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["COMMAND"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script}: no COMMAND = '...' line (the command its record names)")


# Scripts without a record here, and why.
UNMEASURED = {"gpu": "needs a CUDA machine; none was lent since the script was written",
              "positive-control-budget": "a training run (~2 CPU hours shared); its record is the shipped model's "
              "data/toyworld/positive_control/train.json, checked by test_positive_control.py"}


def test_every_benchmark_script_has_a_record_that_names_its_command():
    scripts = {p.stem.replace("_", "-"): p for p in (REPO_ROOT / "benchmarks").glob("*.py")}
    records = {r.name: r for r in read_records()}
    assert set(records) == set(scripts) - set(UNMEASURED), f"scripts and records in {RECORDS_DIR} differ"
    for name, record in records.items():
        assert record.command.startswith(_command_of(scripts[name]))  # the command as run, flags included
        assert _command_of(scripts[name]) == f".venv/bin/python benchmarks/{scripts[name].name}"
        assert record.ratios and all(math.isfinite(r.value) for r in record.ratios), name
        assert record.date[:4].isdigit() and len(record.git_hash) >= 7, name
