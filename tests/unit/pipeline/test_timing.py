"""The benchmarks' timer: both clocks, warm-ups, interleaved order from a seed, medians of paired ratios."""

from __future__ import annotations

import time

import pytest

from anima_probe.pipeline.timing import Timing, interleaved, paired, repeat, timed


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_timed_returns_the_result_and_counts_cpu_work_but_not_sleep():
    took, out = timed(lambda: (_spin(0.02), time.sleep(0.05), 42)[-1], clock="thread")
    assert out == 42
    assert 0.015 < took.cpu < 0.05 and took.wall >= 0.07  # sleeping costs wall time, not CPU time


def test_repeat_warms_up_first_and_times_each_call():
    calls = []
    times = repeat(lambda: calls.append(1), reps=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(isinstance(t, Timing) for t in times)
    with pytest.raises(ValueError, match="reps must be >= 1"):
        repeat(lambda: None, reps=0)
    with pytest.raises(ValueError, match="unknown clock 'gpu'"):
        timed(lambda: None, clock="gpu")


def test_interleaved_runs_every_condition_each_repetition_in_a_seeded_random_order():
    order: list[str] = []
    conditions = {name: (lambda n=name: order.append(n)) for name in "abcd"}
    times = interleaved(conditions, reps=6, seed=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abcd", 6)
    warm, timed_order = order[:4], order[4:]
    assert warm == list("abcd")
    rounds = [timed_order[i:i + 4] for i in range(0, 24, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len({tuple(r) for r in rounds}) > 1
    order.clear()
    interleaved(conditions, reps=6, seed=3, warmup=1)
    assert order[4:] == timed_order  # the same seed, the same order


def test_paired_takes_medians_of_per_repetition_ratios():
    times = {"base": [Timing(1.0, 2.0), Timing(2.0, 2.0), Timing(4.0, 2.0)],
             "x": [Timing(1.1, 3.0), Timing(2.4, 3.0), Timing(4.0, 3.0)]}
    out = paired(times, "base")
    assert out["base"] == {"cpu_s": 2.0, "wall_s": 2.0, "cpu_ratio": 1.0, "wall_ratio": 1.0}
    assert out["x"]["cpu_ratio"] == pytest.approx(1.1)  # ratios 1.1, 1.2, 1.0: the median pairs each repetition
    assert out["x"]["cpu_s"] == 2.4 and out["x"]["wall_ratio"] == 1.5
    with pytest.raises(KeyError, match="base condition 'none'"):
        paired(times, "none")
    with pytest.raises(ValueError, match="not paired"):
        paired({"base": times["base"], "x": times["x"][:2]}, "base")
