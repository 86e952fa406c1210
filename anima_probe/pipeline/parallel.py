"""How do independent pieces of work use every core? Worker processes, each with its share of the torch threads.

`anima-probe report` reruns stale experiments and executes notebooks that do not depend on each other. One process
running them in turn leaves cores idle: torch's intra-op threads parallelise the toy world's small tensors poorly,
and a notebook's kernel start-up is single-threaded. So they run in worker processes (``spawn``: no forked torch
state), each with ``threads`` torch threads, and the results come back in the order of the items. An exception in a
worker is raised here with its own type and message (the command line then prints it as usual).

By hand over ``concurrent.futures`` rather than a job library: the one thing added is the per-worker thread count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def default_jobs(device: str = "cpu") -> int:
    """Every core on the CPU; one job on an accelerator (its memory and queue are shared by all jobs)."""
    return max(1, os.cpu_count() or 1) if str(device) == "cpu" else 1


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def map_processes(fn: Callable, items: Sequence[tuple], jobs: int, threads: int | None = None) -> list[Any]:
    """``[fn(*item) for item in items]`` in ``jobs`` worker processes (``fn`` importable by name), each with
    ``threads`` torch threads (default: the cores shared out among the jobs)."""
    jobs = max(1, min(jobs, len(items)))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_set_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *item) for item in items]
        return [f.result() for f in futures]
