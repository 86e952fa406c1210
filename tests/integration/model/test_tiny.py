"""Tiny twins: byte-identical per seed, different across seeds, in the published key naming."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from anima_probe.model import vae as V
from anima_probe.model.tiny import DIT_FILE, write_tiny, write_tiny_vae


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), prefix="net.", seed=0)


def test_twin_files_are_deterministic(tmp_path, twin):
    again = load_file(str(write_tiny(tmp_path, prefix="net.", seed=0) / DIT_FILE))
    first = load_file(str(twin / DIT_FILE))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    other = load_file(str(write_tiny(tmp_path / "s1", prefix="net.", seed=1, with_vae=False) / DIT_FILE))
    assert not torch.equal(other["net.x_embedder.proj.1.weight"], first["net.x_embedder.proj.1.weight"])

def test_tiny_vae_file_is_byte_identical_per_seed_and_wan_named(tmp_path, twin):
    first = twin / "vae" / "qwen_image_vae_tiny.safetensors"
    again = write_tiny_vae(tmp_path / "a.safetensors", seed=0)
    other = write_tiny_vae(tmp_path / "b.safetensors", seed=1)
    assert again.read_bytes() == first.read_bytes()
    assert other.read_bytes() != first.read_bytes()
    assert V.detect_format(load_file(str(first))) == V.WAN_FORMAT
