"""Test-wide guards: nothing reaches the network, and runs are deterministic."""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The tests run tiny models: one thread is faster there than two fighting over per-op overhead, and on a shared
# 2-core machine a second thread made single test files 10-20x slower (measured: 164 s vs 9 s).
torch.set_num_threads(1)


class NetworkAccessError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a non-loopback socket fails the test that made it."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            return real_connect(self, address)
        raise NetworkAccessError(f"test tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own embedding cache / hash memo: no test reads another's (or the user's) cache."""
    monkeypatch.setenv("ANIMA_PROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Anima twin in the real file formats (shared, read-only: do not modify it)."""
    from anima_probe.model.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_anima(tiny_model_dir):
    from anima_probe.model.anima import load_anima

    return load_anima(tiny_model_dir, with_vae=False)
