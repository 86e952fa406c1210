"""Worker processes give back results in the order of the items, with the torch threads they were given, and a
worker's exception arrives with its own type and message."""

from __future__ import annotations

import math
import os

import pytest
import torch

from anima_probe.pipeline.parallel import ALLOCATOR_TUNABLES, default_jobs, map_processes


def test_results_come_back_in_item_order():
    assert map_processes(math.factorial, [(5,), (3,), (4,)], jobs=2) == [120, 6, 24]


def test_each_worker_runs_with_the_threads_it_was_given():
    assert map_processes(torch.get_num_threads, [(), ()], jobs=2, threads=1) == [1, 1]


def test_a_workers_error_keeps_its_type_and_message():
    with pytest.raises(ValueError, match="factorial"):
        map_processes(math.factorial, [(3,), (-1,)], jobs=2)


def test_one_job_on_an_accelerator():
    assert default_jobs("cuda") == 1 and default_jobs("cpu") >= 1


def test_workers_start_with_the_raised_allocator_thresholds_unless_the_user_set_their_own(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert map_processes(os.getenv, [("GLIBC_TUNABLES",)] * 2, jobs=2) == [ALLOCATOR_TUNABLES] * 2
    assert "GLIBC_TUNABLES" not in os.environ  # this process is left as it was
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    assert map_processes(os.getenv, [("GLIBC_TUNABLES",)], jobs=1) == ["glibc.malloc.arena_max=1"]
