"""Which reports are there, and do the committed ones still state what the code produces now?

`write_index` builds ``reports/README.md`` from the metadata comment every generated report carries;
`check_committed` compares the metrics each committed experiment report states with the latest run, within the
tier baseline's tolerances (a report from another model or experiment version is a mismatch, not a comparison).
"""

from __future__ import annotations

from pathlib import Path

from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.pipeline.baselines import Check, baseline_path, compare, load_baseline
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.report_file import DEFAULT_COMMAND, REPORTS_DIR, read_meta
from anima_probe.pipeline.rundirs import resolve_latest
from anima_probe.pipeline.runs import read_run


def write_index(reports_dir: str | Path = REPORTS_DIR, command: str = DEFAULT_COMMAND) -> Path:
    """reports/README.md: one row per report that carries a metadata comment, with its headline numbers."""
    reports_dir = Path(reports_dir)
    rows = []
    for path in sorted(reports_dir.glob("*.md")):
        meta = read_meta(path) if path.name != "README.md" else None
        if meta is None:
            continue
        model = meta.get("model", {})
        dit = model.get("files", {}).get("dit", "")
        source = f"`{meta['experiment']}` v{meta['version']}" if meta.get("experiment") else "benchmarks"
        rows.append(f"| [{meta['title']}]({path.name}) | {meta.get('question', '')} | "
                    f"{'<br>'.join(meta.get('headline', []))} | {source}; model `{model.get('name', '-')}`"
                    f"{f' dit `{dit[:12]}`' if dit else ''} |")
    lines = ["# Reports", "", f"> **Generated - do not edit.** Written by `{command}` (`make reports`): it reruns the "
             "stale experiments, executes `notebooks/*.ipynb` with papermill and rewrites these files. "
             "`anima-probe regress --tier toy` checks the numbers against `baselines/toy/`.", "",
             "| report | question | headline numbers | source |", "|---|---|---|---|", *rows, ""]
    return atomic_write_text(reports_dir / "README.md", "\n".join(lines))


def check_committed(reports_dir: str | Path, results: str | Path, tier: str = "toy",
                    root: str | Path = REPO_ROOT) -> dict[str, list[Check]]:
    """For each experiment report: its stated metrics vs the latest run, within the tier baseline's tolerances.

    A report written from another model or another experiment version than the run fails as a mismatch.
    """
    out = {}
    for path in sorted(Path(reports_dir).glob("*.md")):
        meta = read_meta(path)
        if not meta or not meta.get("experiment"):
            continue
        exp, run_dir = meta["experiment"], resolve_latest(results, meta["experiment"])
        if run_dir is None:
            out[path.name] = [Check("run", None, None, None, "missing", f"no run of {exp} under {results}")]
            continue
        record, base = read_run(run_dir), load_baseline(baseline_path(tier, exp, root))
        if record.model["files"] != meta["model"]["files"]:
            out[path.name] = [Check("model", None, None, None, "model-mismatch",
                                    f"report is from model {meta['model']['name']}, run from {record.model['name']}")]
            continue
        stated = {"experiment": exp, "version": meta["version"], "metrics": {
            k: {**entry, "value": meta["metrics"][k]} for k, entry in base["metrics"].items() if k in meta["metrics"]}}
        out[path.name] = compare(record.metrics, record.version, stated, record.experiment)
    return out
