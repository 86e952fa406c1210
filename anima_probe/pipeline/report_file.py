"""What does a generated report hold, and how does a notebook write one?

A notebook named after an experiment gets that experiment's run folder (`find_run`), reads its record
(`runs.read_run`) and writes ``reports/<name>.md`` with `write_report`: the "generated - do not edit" header (model
and file hashes, command, git hash), the question, its sections and figures, the full metrics table and a one-line
JSON metadata comment (metrics, headline) that the index and the committed-report check read back (`read_meta`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from anima_probe.errors import InputError, MissingFileError, UnknownNameError
from anima_probe.pipeline.atomic import atomic_write_bytes, atomic_write_text
from anima_probe.pipeline.figures import save_figure
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import ResultRecord, read_run

REPORTS_DIR = REPO_ROOT / "reports"
DEFAULT_COMMAND = "anima-probe report"
_META = re.compile(r"^<!-- anima-probe:report (\{.*\}) -->$", re.M)


def find_run(run_dir: str | Path | None, experiment: str, results: str | Path = REPO_ROOT / "results") -> Path:
    """The notebook's run folder: the one passed in, else the latest run of `experiment` under `results`."""
    if run_dir is not None:
        return Path(run_dir)
    latest = resolve_latest(results, experiment)
    if latest is None:
        raise MissingFileError(f"no run of {experiment} under {results}: run `anima-probe run {experiment}` "
                                "or `anima-probe report`")
    return latest


def metrics_table(record: ResultRecord, keys: list[str] | None = None, digits: int = 4) -> str:
    """Markdown table of metrics with their better direction (all of them, in the run's order, by default)."""
    keys = list(record.metrics) if keys is None else keys
    unknown = [k for k in keys if k not in record.metrics]
    if unknown:
        raise UnknownNameError(f"{record.experiment}: no metrics {unknown}; the run has {sorted(record.metrics)}")
    rows = [f"| `{k}` | {record.metrics[k]:.{digits}f} | {'higher' if record.higher_is_better[k] else 'lower'} |"
            for k in keys]
    return "\n".join(["| metric | value | better |", "|---|---|---|", *rows])


def meta_comment(meta: dict[str, Any]) -> str:
    """The one-line machine-readable part of a report (the index and `check_committed` read it)."""
    return f"<!-- anima-probe:report {json.dumps(meta, sort_keys=True, allow_nan=False)} -->"


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """A report's metadata comment, or None for a hand-written file."""
    text = Path(path).read_text(encoding="utf-8")
    match = _META.search(text)
    if match is None:
        return None
    try:
        return json.loads(match.group(1))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: damaged anima-probe:report comment ({err.msg}); regenerate the report") from None


def _header(record: ResultRecord, notebook: str, run_dir: Path, command: str) -> str:
    files = ", ".join(f"{role} `{digest[:16]}`" for role, digest in sorted(record.model["files"].items()))
    return (f"> **Generated - do not edit.** Written by `{command}` from `{notebook}` (edit those, not this file). "
            f"Experiment `{record.experiment}` v{record.version}, run `{run_dir.name}` of {record.date}, "
            f"code git `{record.git_hash}`. Model `{record.model['name']}`, sha256 of its files: {files or 'none'}. "
            f"Device {record.env.get('device', '?')}, torch {record.env.get('torch', '?')}.")


def _save_figures(name: str, figures: dict[str, tuple[Any, str]], reports_dir: Path) -> list[str]:
    lines = []
    for key, (fig, caption) in figures.items():
        rel = f"figures/{name}_{key}.png"
        if isinstance(fig, (str, Path)):
            atomic_write_bytes(reports_dir / rel, Path(fig).read_bytes())  # a run's own figure, copied as is
        else:
            save_figure(fig, reports_dir / rel)
        lines += [f"![{caption}]({rel})", ""]
    return lines


def write_report(name: str, run_dir: str | Path, *, title: str, sections: list[str],
                 figures: dict[str, tuple[Any, str]] | None = None, headline: list[str] = (),
                 notebook: str, reports_dir: str | Path = REPORTS_DIR, command: str = DEFAULT_COMMAND,
                 question: str | None = None) -> Path:
    """Write ``reports_dir/<name>.md``: header, question, sections, figures (Figure or a file path, with a
    caption), the full metrics table and the metadata comment. Returns the path."""
    reports_dir, run_dir = Path(reports_dir), Path(run_dir)
    record = read_run(run_dir)
    if question is None:
        from anima_probe.pipeline.experiment import get

        question = get(record.experiment).question
    lines = [f"# {title}", "", _header(record, notebook, run_dir, command), "", f"**Question.** {question}", ""]
    for section in sections:
        lines += [section.strip(), ""]
    lines += _save_figures(name, figures or {}, reports_dir)
    lines += ["<details><summary>All metrics of this run</summary>", "", metrics_table(record), "", "</details>", ""]
    meta = {"name": name, "title": title, "question": question, "headline": list(headline),
            "experiment": record.experiment, "version": record.version, "metrics": record.metrics,
            "model": record.model, "git_hash": record.git_hash, "notebook": notebook}
    lines += [meta_comment(meta), ""]
    return atomic_write_text(reports_dir / f"{name}.md", "\n".join(lines))
