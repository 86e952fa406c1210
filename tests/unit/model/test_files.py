"""The one safetensors reader: header checks before any tensor, strict layouts with counts, one error type."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from anima_probe.model.files import (
    ModelFileError,
    check_layout,
    count_indexed,
    load_tensors,
    read_metadata,
    required_shape,
    save_tensors,
    tensor_shapes,
)


@pytest.fixture
def small(tmp_path):
    tensors = {"a.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "a.ids": torch.arange(4)}
    return save_tensors(tensors, tmp_path / "small.safetensors", {"format": "test", "seed": 3})


def test_round_trip_reads_shapes_metadata_and_tensors(small):
    assert tensor_shapes(small) == {"a.weight": (2, 3), "a.ids": (4,)}
    assert read_metadata(small) == {"format": "test", "seed": "3"}  # values are stored as strings
    loaded = load_tensors(small)
    assert torch.equal(loaded["a.weight"], torch.arange(6.0).view(2, 3)) and torch.equal(loaded["a.ids"], torch.arange(4))


def test_load_renames_and_casts_floating_point_tensors_only(small):
    loaded = load_tensors(small, {"a.weight": "w", "a.ids": "i"}, dtype=torch.bfloat16)
    assert set(loaded) == {"w", "i"}
    assert loaded["w"].dtype == torch.bfloat16 and loaded["i"].dtype == torch.int64


def test_a_file_without_metadata_has_none(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    assert read_metadata(path) == {}


@pytest.mark.parametrize("make, message", [
    (lambda p, good: None, "no such file"),
    (lambda p, good: p.write_bytes(b"abc"), r"3 bytes, too short for a header"),
    (lambda p, good: p.write_bytes(struct.pack("<Q", 10**6) + b"{}"), "header length 1000000 does not fit"),
    (lambda p, good: p.write_bytes(struct.pack("<Q", 4) + b"nope"), "header is not JSON"),
    (lambda p, good: p.write_bytes(good[: len(good) - 8]), r"truncated safetensors file: tensors need \d+ bytes"),
    (lambda p, good: p.write_text("hello, not a model " * 10), "not a safetensors file"),
])
def test_broken_files_fail_before_any_tensor_with_the_file_named(tmp_path, small, make, message):
    bad = tmp_path / "bad.safetensors"
    make(bad, small.read_bytes())
    for read in (tensor_shapes, read_metadata, load_tensors):
        with pytest.raises(ModelFileError, match=message) as err:
            read(bad)
        assert "bad.safetensors" in str(err.value)


def test_a_missing_key_in_a_read_is_named(small):
    with pytest.raises(ModelFileError, match=r"small\.safetensors: not a readable safetensors file"):
        load_tensors(small, {"b.weight": "b"})


def test_layout_check_counts_each_kind_and_names_keys_in_the_file_naming():
    expected = {"w": (2, 3), "b": (2,), "n": (4,)}
    check_layout({"w": (2, 3), "b": (2,), "n": (4,)}, expected, "m.safetensors", "fmt")  # a match is silent
    found = {"w": (3, 3), "b": (2,), "extra": (1,)}
    with pytest.raises(ModelFileError) as err:
        check_layout(found, expected, "m.safetensors", "tiny format", "net.")
    assert str(err.value) == ("m.safetensors (tiny format): keys do not match the layout; 1 missing: net.n; "
                              "1 unexpected: net.extra; 1 mis-shaped: net.w [3, 3] (expected [2, 3])")
    with pytest.raises(ModelFileError, match=r"1 missing: N; 1 unexpected: EXTRA"):
        check_layout(found, expected, "m.safetensors", "fmt", str.upper)  # a renaming function, e.g. the VAE's


def test_layout_check_shows_five_keys_per_kind_and_the_full_count():
    expected = {f"k{i}": (1,) for i in range(8)}
    with pytest.raises(ModelFileError, match=r"8 missing: k0, k1, k2, k3, k4, \.\.\.; 0 unexpected; 0 mis-shaped$"):
        check_layout({}, expected, "m", "fmt")


def test_shape_helpers():
    shapes = {"blocks.0.w": (4, 2), "blocks.3.w": (4, 2), "head.w": (1,)}
    assert count_indexed(shapes, r"blocks\.(\d+)\.") == 4 and count_indexed(shapes, r"layers\.(\d+)\.") == 0
    assert required_shape(shapes, "head.w", "m") == (1,)
    with pytest.raises(ModelFileError, match="m: missing key 'tail.w', needed to infer"):
        required_shape(shapes, "tail.w", "m")


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, small):
    before = small.read_bytes()
    tied = torch.zeros(4)
    with pytest.raises(RuntimeError, match="share memory"):  # safetensors refuses tied tensors, mid-write
        save_tensors({"x": tied, "y": tied}, small)
    assert small.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["small.safetensors"]
