"""How long does a piece of work take, measured so that a shared CPU does not fool us? The benchmarks' one timer.

Every benchmark in ``benchmarks/`` times through here. Each measurement takes two clocks: wall time and CPU time
of this process (``process``) or of the calling thread (``thread``). On a machine shared with other jobs wall time
swings by tens of percent with their load while CPU time counts only our own work, so the benchmarks judge their
targets on CPU time (with one torch thread, so CPU time is work done, not OpenMP spin-waits) and report wall time
beside it. Conditions that are compared run interleaved, in a fresh random order every repetition, so drift in the
machine's load hits all of them alike, and they are compared by the median of paired ratios.

By hand rather than `torch.utils.benchmark`: its Timer measures wall time only, and has no interleaving of
conditions or CPU clocks, which is what makes these ratios trustworthy on a shared machine. On a GPU (`device`),
the clocks stop only once the device's queued kernels are done.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anima_probe.errors import InputError, UnknownNameError

CLOCKS: dict[str, Callable[[], float]] = {"process": time.process_time, "thread": time.thread_time}


@dataclass(frozen=True)
class Timing:
    """Seconds one call took: `cpu` on the chosen CPU clock, `wall` on the monotonic wall clock."""

    cpu: float
    wall: float


def _clock(name: str) -> Callable[[], float]:
    if name not in CLOCKS:
        raise InputError(f"unknown clock {name!r}; choose from {sorted(CLOCKS)}")
    return CLOCKS[name]


def _synchronize(device) -> None:
    """Wait for a CUDA device's queued kernels: they run asynchronously, so a clock read earlier stops too soon."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], clock: str = "process", device=None) -> tuple[Timing, Any]:
    """(how long `fn()` took, what it returned); with a CUDA `device`, its kernels are waited for."""
    cpu_clock = _clock(clock)
    _synchronize(device)
    wall, cpu = time.perf_counter(), cpu_clock()
    out = fn()
    _synchronize(device)
    return Timing(cpu_clock() - cpu, time.perf_counter() - wall), out


def repeat(fn: Callable[[], Any], reps: int, warmup: int = 1, clock: str = "process", device=None) -> list[Timing]:
    """`reps` timings of `fn()` after `warmup` untimed calls (kernels, allocator and caches warmed)."""
    if reps < 1:
        raise InputError(f"reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    return [timed(fn, clock, device)[0] for _ in range(reps)]


def interleaved(conditions: Mapping[str, Callable[[], Any]], reps: int, *, seed: int = 0, warmup: int = 1,
                clock: str = "process", device=None) -> dict[str, list[Timing]]:
    """Time every condition once per repetition, in a fresh random order each time; name -> `reps` timings.

    Each condition is warmed up `warmup` times first. The order is drawn from `seed`, so a rerun repeats it.
    """
    if reps < 1:
        raise InputError(f"reps must be >= 1, got {reps}")
    for fn in conditions.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[Timing]] = {name: [] for name in conditions}
    order, rng = list(conditions), random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(conditions[name], clock, device)[0])
    return times


def paired(times: Mapping[str, list[Timing]], base: str) -> dict[str, dict[str, float]]:
    """Per condition: median CPU and wall seconds, and the median over repetitions of the paired ratio
    (this condition's time / `base`'s time in the same repetition), on either clock."""
    if base not in times:
        raise UnknownNameError(f"base condition {base!r} is not among {sorted(times)}")
    ref = times[base]
    out = {}
    for name, ts in times.items():
        if len(ts) != len(ref):
            raise InputError(f"{name!r} has {len(ts)} timings, {base!r} {len(ref)}: not paired")
        out[name] = {"cpu_s": statistics.median(t.cpu for t in ts),
                     "wall_s": statistics.median(t.wall for t in ts),
                     "cpu_ratio": statistics.median(t.cpu / b.cpu for t, b in zip(ts, ref)),
                     "wall_ratio": statistics.median(t.wall / b.wall for t, b in zip(ts, ref))}
    return out
