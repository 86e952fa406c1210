"""How do independent pieces of work use every core? Worker processes, each with its share of the torch threads.

`anima-probe report` reruns stale experiments and executes notebooks that do not depend on each other. One process
running them in turn leaves cores idle: torch's intra-op threads parallelise the toy world's small tensors poorly,
and a notebook's kernel start-up is single-threaded. So they run in worker processes (``spawn``: no forked torch
state), each with ``threads`` torch threads, and the results come back in the order of the items. An exception in a
worker is raised here with its own type and message (the command line then prints it as usual).

By hand over ``concurrent.futures`` rather than a job library: the one thing added is the per-worker thread count.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def default_jobs(device: str = "cpu") -> int:
    """Every core on the CPU; one job on an accelerator (its memory and queue are shared by all jobs)."""
    return max(1, os.cpu_count() or 1) if str(device) == "cpu" else 1


# glibc hands every freed block above its mmap threshold back to the kernel and trims the heap top eagerly, so the
# DiT's large short-lived activations are page-faulted in afresh on every call: a fifth of the CPU of a process
# making toy DiT calls went to the kernel, and the raised thresholds cut its CPU to 0.87x (benchmarks/dit_call.py,
# reports/benchmarks/dit-call.json). A process reads these tunables when it starts, so the workers get them; a
# user's own GLIBC_TUNABLES wins, other C libraries ignore the variable. (The GNU C Library manual, "Memory
# Allocation Tunables": glibc.malloc.mmap_threshold and glibc.malloc.trim_threshold; setting either turns off
# glibc's dynamic threshold.)
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


@contextlib.contextmanager
def allocator_tunables():
    """GLIBC_TUNABLES set (unless already set) for the processes started inside."""
    if "GLIBC_TUNABLES" in os.environ:
        yield
        return
    os.environ["GLIBC_TUNABLES"] = ALLOCATOR_TUNABLES
    try:
        yield
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def map_processes(fn: Callable, items: Sequence[tuple], jobs: int, threads: int | None = None) -> list[Any]:
    """``[fn(*item) for item in items]`` in ``jobs`` worker processes (``fn`` importable by name), each with
    ``threads`` torch threads (default: the cores shared out among the jobs)."""
    jobs = max(1, min(jobs, len(items)))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    with allocator_tunables(), ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_set_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *item) for item in items]
        return [f.result() for f in futures]
