"""Are the committed reports what the code produces now? `anima-probe report` (``make reports``) regenerates them.

`generate` reruns the stale experiments (rule in `anima_probe.pipeline.freshness`), executes every
``notebooks/*.ipynb`` headless (`anima_probe.pipeline.notebooks`), each writing its report
(`anima_probe.pipeline.report_file`), and indexes them (`anima_probe.pipeline.report_index`). A notebook named
after an experiment gets that experiment's fresh run folder as its ``run_dir`` parameter. ``--check`` writes
nothing and compares the committed reports with fresh runs instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anima_probe.errors import UnknownNameError, UsageError
from anima_probe.pipeline.notebooks import execute
from anima_probe.pipeline.parallel import default_jobs, map_processes
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.report_file import DEFAULT_COMMAND, REPORTS_DIR
from anima_probe.pipeline.report_index import check_committed, write_index

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def refresh(model: str | Path | None = None, *, results: str | Path = "results", names: list[str] | None = None,
            force: bool = False, device: str = "cpu", dtype=None, progress: bool = True, log=print,
            registry: dict | None = None, anima=None, jobs: int = 1, load: dict | None = None) -> dict[str, Path]:
    """Rerun the stale experiments (all discovered ones by default); returns name -> fresh run folder.

    The model is loaded only when `anima` is not given, from `model` (default: the toy world). With ``jobs`` > 1
    and ``load`` (`load_for`'s keyword arguments) each experiment runs in a worker process that loads what it needs
    (`pipeline.parallel`); otherwise they run in turn on one model."""
    import torch

    from anima_probe.pipeline.experiment import discover, ensure_fresh, load_for

    registry = discover() if registry is None else registry
    names = sorted(registry) if names is None else names
    if not names:
        return {}
    if jobs > 1 and load is not None and len(names) > 1:
        log(f"{len(names)} experiments in {min(jobs, len(names))} worker processes: {', '.join(names)}")
        paths = map_processes(_fresh_in_worker, [(n, load, str(results), force) for n in names], jobs)
        for name, path in zip(names, paths, strict=True):
            log(f"{name}: {path}")
        return dict(zip(names, paths, strict=True))
    if anima is None:
        anima = load_for([registry[n] for n in names], model, device=device, dtype=dtype or torch.float32)
    return ensure_fresh(names, registry, anima, results, force=force, progress=progress, log=log)


def _fresh_in_worker(name: str, load: dict, results: str, force: bool) -> Path:
    """One experiment in a worker process: its own model (what it needs), rerun if stale."""
    from anima_probe.pipeline.experiment import discover, ensure_fresh, load_for

    registry = discover()
    anima = load_for([registry[name]], **load)
    # flushed line by line: workers share the command's stdout, and a block-buffered line could be split by another's
    return ensure_fresh([name], registry, anima, results, force=force, progress=False,
                        log=lambda line: print(line, flush=True))[name]


def generate(model: str | Path | None = None, *, results: str | Path = "results",
             reports_dir: str | Path = REPORTS_DIR, only: list[str] | None = None, force: bool = False,
             device: str = "cpu", dtype=None, progress: bool = True, log=print,
             notebooks_dir: str | Path = NOTEBOOKS_DIR, command: str = DEFAULT_COMMAND,
             registry: dict | None = None, anima=None, jobs: int = 1, load: dict | None = None) -> list[Path]:
    """Rerun stale experiments, execute the notebooks, write the index; returns the executed notebooks.
    ``jobs`` > 1: the notebooks (and, given ``load``, the experiments) run in that many worker processes."""
    from anima_probe.pipeline.experiment import discover

    registry = discover() if registry is None else registry
    notebooks = sorted(Path(notebooks_dir).glob("*.ipynb"))
    if only:
        unknown = sorted(set(only) - {nb.stem for nb in notebooks})
        if unknown:
            raise UnknownNameError(f"no notebooks {unknown} in {notebooks_dir}; have {[nb.stem for nb in notebooks]}")
        notebooks = [nb for nb in notebooks if nb.stem in only]
    lacking = sorted(set(registry) - {nb.stem for nb in Path(notebooks_dir).glob("*.ipynb")})
    if lacking:
        log(f"warning: experiments without a notebook (no report): {lacking}")
    names = [nb.stem for nb in notebooks if nb.stem in registry]
    runs = refresh(model, results=results, names=names, force=force, device=device, dtype=dtype,
                   progress=progress, log=log, registry=registry, anima=anima, jobs=jobs, load=load)
    items = [(nb, Path(results) / "notebooks" / nb.name,
              {"reports_dir": str(Path(reports_dir).resolve()), "command": command,
               "run_dir": str(runs[nb.stem]) if nb.stem in runs else None}) for nb in notebooks]
    log(f"notebooks: {', '.join(nb.name for nb in notebooks)}")
    executed = map_processes(execute, items, jobs) if jobs > 1 else [execute(*item) for item in items]
    write_index(reports_dir, command)
    return executed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default="toy", choices=["toy", "anima"],
                   help="toy: the bundled toy world into reports/; anima: --model DIR into reports/anima/")
    p.add_argument("--results", default=None, help="run folders (default: results/, or results/anima/)")
    p.add_argument("--reports", default=None, help="where reports go (default: reports/, or reports/anima/)")
    p.add_argument("--only", nargs="+", default=None, help="notebook names (default: all of notebooks/)")
    p.add_argument("--force", action="store_true", help="rerun the experiments even when fresh")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for the experiments and notebooks "
                   "(default: every CPU core with --device cpu, else 1)")
    p.add_argument("--check", action="store_true",
                   help="write nothing: compare the committed reports' metrics with fresh runs (within tolerance)")


def _load(args: argparse.Namespace):
    """The model named by the shared model options (device checked first), with what the experiments need."""
    from anima_probe.model.options import model_kwargs
    from anima_probe.pipeline.experiment import discover, load_for

    return load_for(list(discover().values()), **model_kwargs(args))


def cli(args: argparse.Namespace) -> int:
    """`anima-probe report`: regenerate the reports (or, with --check, verify the committed ones)."""
    from anima_probe.model.options import model_kwargs
    from anima_probe.pipeline.baselines import format_table, gate
    from anima_probe.pipeline.gate import tier_results

    if args.tier != "toy" and args.model is None:
        raise UsageError(f"--tier {args.tier} needs --model DIR (the weights its reports are for)")
    results = Path(args.results) if args.results else tier_results(args.tier)
    reports_dir = Path(args.reports) if args.reports else REPORTS_DIR / ("" if args.tier == "toy" else args.tier)
    anima = _load(args)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be >= 1")
    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    if not args.check:
        generate(results=results, reports_dir=reports_dir, only=args.only, force=args.force, anima=anima,
                 progress=not args.quiet, jobs=jobs, load=model_kwargs(args))
        print(f"reports written to {reports_dir} (index: {reports_dir / 'README.md'})")
        return 0
    refresh(results=results, force=args.force, anima=anima, progress=not args.quiet)
    failed = []
    for name, checks in check_committed(reports_dir, results, args.tier).items():
        print(f"== {reports_dir / name} vs the latest run")
        print(format_table(checks))
        failed += [name] if gate(checks) else []
    print(f"committed reports: {'OUT OF DATE: ' + ', '.join(failed) if failed else 'match the code'}")
    return 1 if failed else 0
