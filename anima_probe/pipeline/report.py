"""Are the committed reports what the code produces now? Notebooks turn runs into reports/*.md and an index.

`generate` (``anima-probe report``, ``make reports``): rerun the stale experiments (rule in `freshness`),
execute every ``notebooks/*.ipynb`` headless with papermill on the project's own kernel, and index the reports.
A notebook named after an experiment gets that experiment's fresh run folder as its ``run_dir`` parameter; the
notebook is thin (question, plot, table, interpretation) and writes its report with `write_report`, which puts
the "generated - do not edit" header (model and file hashes, command, git hash) on it and a one-line JSON
metadata comment (metrics, headline) under it. `write_index` builds reports/README.md from those comments, and
`check_committed` compares the metrics of the committed reports with fresh runs within the baselines' tolerances.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from anima_probe.pipeline.baselines import Check, baseline_path, compare, load_baseline
from anima_probe.pipeline.runs import (
    REPO_ROOT,
    ResultRecord,
    atomic_write_bytes,
    atomic_write_text,
    read_run,
    resolve_latest,
    save_figure,
)

KERNEL = "anima-probe"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
REPORTS_DIR = REPO_ROOT / "reports"
DEFAULT_COMMAND = "anima-probe report"
_META = re.compile(r"^<!-- anima-probe:report (\{.*\}) -->$", re.M)

# ---------------------------------------------------------------- the notebook side


def find_run(run_dir: str | Path | None, experiment: str, results: str | Path = REPO_ROOT / "results") -> Path:
    """The notebook's run folder: the one passed in, else the latest run of `experiment` under `results`."""
    if run_dir is not None:
        return Path(run_dir)
    latest = resolve_latest(results, experiment)
    if latest is None:
        raise FileNotFoundError(f"no run of {experiment} under {results}: run `anima-probe run {experiment}` "
                                "or `anima-probe report`")
    return latest


def load_run(run_dir: str | Path) -> ResultRecord:
    return read_run(run_dir)


def metrics_table(record: ResultRecord, keys: list[str] | None = None, digits: int = 4) -> str:
    """Markdown table of metrics with their better direction (all of them, in the run's order, by default)."""
    keys = list(record.metrics) if keys is None else keys
    unknown = [k for k in keys if k not in record.metrics]
    if unknown:
        raise KeyError(f"{record.experiment}: no metrics {unknown}; the run has {sorted(record.metrics)}")
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
        raise ValueError(f"{path}: damaged anima-probe:report comment ({err.msg}); regenerate the report") from None


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
    record = load_run(run_dir)
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


# ---------------------------------------------------------------- index and committed-report check


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


_SECTION = re.compile(r"<!-- begin:([\w.-]+) -->\n(.*?)\n<!-- end:\1 -->", re.S)
_RATIO = re.compile(r"^\**(-?\d+(?:\.\d+)?)x\b")  # bold (**2.9x**) counts too


def performance_ratios(path: str | Path) -> list[dict[str, Any]]:
    """Every ``<number>x`` cell of the tables in a sectioned performance report (`runs.update_section`):
    section, the command that wrote it, the table's name (the ``##`` heading above it, plus a ``**bold**`` line
    under that heading when one section holds several tables), row label, column, value. The ``summary``
    section, which this function's own output fills, is skipped."""
    out = []
    for section, body in _SECTION.findall(Path(path).read_text(encoding="utf-8")):
        if section == "summary":
            continue
        command = re.search(r"Generated by `([^`]+)`", body)
        heading, table, header = "", "", None
        for line in body.splitlines():
            if line.startswith("#"):
                heading = table = line.lstrip("# ").strip()
                header = None
            elif re.fullmatch(r"\*\*[^*]+\*\*", line.strip()):
                table, header = f"{heading}: {line.strip().strip('*')}", None
            elif not line.startswith("|"):
                header = None  # a table ends at the first non-table line
            elif header is None:
                header = [c.strip() for c in line.strip("|").split("|")]
            elif not set(line) <= set("|-: "):
                cells = [c.strip() for c in line.strip("|").split("|")]
                for column, cell in zip(header[1:], cells[1:]):
                    if match := _RATIO.match(cell):
                        out.append({"section": section, "command": command.group(1) if command else None,
                                    "table": table, "row": cells[0], "column": column,
                                    "value": float(match.group(1)), "cell": cell})
    return out


def performance_targets(path: str | Path) -> list[tuple[str, str]]:
    """(section, sentence) for each sentence or table cell of a performance report that says a target is
    "met" or "NOT met", so an index can state the verdicts the benchmarks wrote themselves."""
    found = []
    for section, body in _SECTION.findall(Path(path).read_text(encoding="utf-8")):
        if section == "summary":
            continue
        for line in body.splitlines():
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                parts = [f"{cells[0]}: {c}" for c in cells[1:]]
            else:
                parts = re.split(r"(?<=\.)\s+", line)
            found += [(section, p.strip()) for p in parts if re.search(r"\b(NOT )?met\b", p)]
    return found


# ---------------------------------------------------------------- executing the notebooks


def ensure_kernel() -> str:
    """Register the project's kernel (this interpreter) inside its environment if it is missing or points at
    another interpreter, so papermill runs notebooks with the package and versions of this checkout."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        if KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable:
            return KERNEL
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="anima-probe (this checkout)", prefix=sys.prefix)
    return KERNEL


def declared_parameters(notebook: str | Path) -> set[str]:
    """Names assigned at top level in the cell tagged ``parameters``.

    By hand (a few lines of ast) because papermill.inspect_notebook insists on kernel metadata first."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return set()
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def execute(notebook: str | Path, out_path: str | Path, parameters: dict[str, Any]) -> Path:
    """Run one notebook headless; only the parameters its `parameters` cell declares are passed."""
    import papermill

    notebook = Path(notebook)
    declared = declared_parameters(notebook)
    params = {k: v for k, v in parameters.items() if k in declared}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(out_path), parameters=params, kernel_name=ensure_kernel(), language="python",
                                   progress_bar=False, cwd=str(REPO_ROOT))
    except papermill.PapermillExecutionError as err:
        raise RuntimeError(f"{notebook} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                           f"(executed copy with the traceback: {out_path})") from None
    return Path(out_path)


def refresh(model: str | Path | None = None, *, results: str | Path = "results", names: list[str] | None = None,
            force: bool = False, device: str = "cpu", dtype=None, progress: bool = True, log=print,
            registry: dict | None = None, anima=None) -> dict[str, Path]:
    """Rerun the stale experiments (all discovered ones by default); returns name -> fresh run folder.

    The model is loaded only when `anima` is not given, from `model` (default: the toy world)."""
    import torch

    from anima_probe.model.anima import load_anima
    from anima_probe.pipeline.experiment import discover
    from anima_probe.pipeline.freshness import ensure_fresh

    registry = discover() if registry is None else registry
    names = sorted(registry) if names is None else names
    if not names:
        return {}
    if anima is None:
        anima = load_anima(model, device=device, dtype=dtype or torch.float32, with_vae=False)
    return ensure_fresh(names, registry, anima, results, force=force, progress=progress, log=log)


def generate(model: str | Path | None = None, *, results: str | Path = "results",
             reports_dir: str | Path = REPORTS_DIR, only: list[str] | None = None, force: bool = False,
             device: str = "cpu", dtype=None, progress: bool = True, log=print,
             notebooks_dir: str | Path = NOTEBOOKS_DIR, command: str = DEFAULT_COMMAND,
             registry: dict | None = None, anima=None) -> list[Path]:
    """Rerun stale experiments, execute the notebooks, write the index; returns the executed notebooks."""
    from anima_probe.pipeline.experiment import discover

    registry = discover() if registry is None else registry
    notebooks = sorted(Path(notebooks_dir).glob("*.ipynb"))
    if only:
        unknown = sorted(set(only) - {nb.stem for nb in notebooks})
        if unknown:
            raise KeyError(f"no notebooks {unknown} in {notebooks_dir}; have {[nb.stem for nb in notebooks]}")
        notebooks = [nb for nb in notebooks if nb.stem in only]
    lacking = sorted(set(registry) - {nb.stem for nb in Path(notebooks_dir).glob("*.ipynb")})
    if lacking:
        log(f"warning: experiments without a notebook (no report): {lacking}")
    names = [nb.stem for nb in notebooks if nb.stem in registry]
    runs = refresh(model, results=results, names=names, force=force, device=device, dtype=dtype,
                   progress=progress, log=log, registry=registry, anima=anima)
    executed = []
    for nb in notebooks:
        params = {"reports_dir": str(Path(reports_dir).resolve()), "command": command,
                  "run_dir": str(runs[nb.stem]) if nb.stem in runs else None}
        log(f"notebook {nb.name}")
        executed.append(execute(nb, Path(results) / "notebooks" / nb.name, params))
    write_index(reports_dir, command)
    return executed


# ---------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default="toy", choices=["toy", "anima"],
                   help="toy: the bundled toy world into reports/; anima: --model DIR into reports/anima/")
    p.add_argument("--model", default=None, help="model folder (tier anima: the real weights)")
    p.add_argument("--results", default=None, help="run folders (default: results/, or results/anima/)")
    p.add_argument("--reports", default=None, help="where reports go (default: reports/, or reports/anima/)")
    p.add_argument("--only", nargs="+", default=None, help="notebook names (default: all of notebooks/)")
    p.add_argument("--force", action="store_true", help="rerun the experiments even when fresh")
    p.add_argument("--check", action="store_true",
                   help="write nothing: compare the committed reports' metrics with fresh runs (within tolerance)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cli(args: argparse.Namespace) -> int:
    """`anima-probe report`: regenerate the reports (or, with --check, verify the committed ones)."""
    from anima_probe.pipeline.baselines import format_table, gate
    from anima_probe.pipeline.gate import tier_results

    if args.tier != "toy" and args.model is None:
        raise SystemExit(f"--tier {args.tier} needs --model DIR (the weights its reports are for)")
    results = Path(args.results) if args.results else tier_results(args.tier)
    reports_dir = Path(args.reports) if args.reports else REPORTS_DIR / ("" if args.tier == "toy" else args.tier)
    if not args.check:
        generate(args.model, results=results, reports_dir=reports_dir, only=args.only, force=args.force,
                 device=args.device, progress=not args.quiet)
        print(f"reports written to {reports_dir} (index: {reports_dir / 'README.md'})")
        return 0
    refresh(args.model, results=results, force=args.force, device=args.device, progress=not args.quiet)
    failed = []
    for name, checks in check_committed(reports_dir, results, args.tier).items():
        print(f"== {reports_dir / name} vs the latest run")
        print(format_table(checks))
        failed += [name] if gate(checks) else []
    print(f"committed reports: {'OUT OF DATE: ' + ', '.join(failed) if failed else 'match the code'}")
    return 1 if failed else 0
