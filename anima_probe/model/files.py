"""Is this safetensors file what it claims to be? The one strict reader (and writer) of every model file.

Every tensor file of the suite goes through here: the DiT + LLM adapter single file, Qwen3, the VAE, CLIP-L, both
modulation-source families and the embedding cache's entries. Reading starts from the header alone
(`read_header`: a missing, short, non-JSON or truncated file fails before any tensor is touched), the caller
compares the key -> shape table with the layout its architecture implies (`check_layout`: missing, unexpected and
mis-shaped keys, with counts and the first offenders named in the file's own key naming), and only then reads the
tensors, one at a time (`load_tensors`). Every failure is a `ModelFileError` naming the file (and the format and
key where there is one). `save_tensors` writes through the one atomic writer.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anima_probe.errors import InputError
from anima_probe.pipeline.atomic import atomic_path

SHOWN_KEYS = 5  # offending keys named per category in an error message
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class ModelFileError(InputError):
    """A model file that cannot be loaded as asked: missing, not safetensors, truncated, of another format, or
    with keys and shapes that do not match the architecture. The message names the file (and key)."""


def read_header(path: str | Path) -> dict:
    """The safetensors JSON header (``__metadata__`` included), checked against the file's size.

    By hand (a dozen lines of the documented format: u64 header length, JSON, data) because safetensors' own
    errors name neither the file nor what is wrong with it, and `safe_open` maps the whole file first.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(size - 8, _MAX_HEADER):
            raise ModelFileError(f"{path}: not a safetensors file (header length {n} does not fit a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        raise ModelFileError(f"{path}: not a safetensors file (a header entry has no data_offsets)") from None
    if 8 + n + end > size:
        raise ModelFileError(f"{path}: truncated safetensors file: tensors need {8 + n + end} bytes, the file has {size}")
    return header


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the header alone (no tensor data is read)."""
    return {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header's ``__metadata__`` (string -> string), empty when the file has none."""
    return dict(read_header(path).get("__metadata__") or {})


FLOAT_KINDS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}  # safetensors names


def check_dtypes(header: Mapping, path, keys) -> None:
    """Every tensor in `keys` is stored in a floating dtype of a known kind (float64: allowed, with a warning)."""
    bad = [(k, header[k]["dtype"]) for k in keys if header[k].get("dtype") not in FLOAT_KINDS]
    if bad:
        shown = ", ".join(f"{k} ({d})" for k, d in bad[:SHOWN_KEYS])
        raise ModelFileError(f"{path}: {len(bad)} tensor(s) not stored as float16, bfloat16, float32 or float64: {shown}")
    if any(header[k]["dtype"] == "F64" for k in keys):
        warnings.warn(f"{path}: stored in float64; loading it cast to the requested dtype (a float64 Anima file is "
                      "unusual: was it exported by mistake?)", stacklevel=3)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in `t`. One sum first: NaN and inf propagate through it, so a finite sum proves the tensor
    finite at the cost of one reduction in the tensor's own dtype (measured ~0.1x a copy of it; asking for a float32
    result instead made bf16 24x slower); only a non-finite sum (or an overflow) pays for the exact check."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


@contextmanager
def one_torch_thread():
    """Torch's intra-op threads set to 1 inside, restored after. The scan is one pass over memory, which more
    threads do not speed up; on a busy CPU they slow it down: 4.2 GB of bf16 summed in 0.25 s with 1 thread and in
    2.7 s with 2 while other processes held the 2 cores (benchmarks/loading.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_tensors(path: str | Path, keys: Mapping[str, str] | None = None, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", weights: bool = False) -> dict[str, torch.Tensor]:
    """Read `keys` (file key -> wanted key; None: every key under its own name) one tensor at a time, cast as
    it goes (floating-point tensors only). With `weights` (a model's weight file), every tensor must be stored as a
    float of a known kind and hold no NaN or inf (checked before the cast, which could overflow): a non-finite
    weight makes all-white images with no other sign.

    One tensor at a time keeps the peak at about one copy of the weights: a full-size bf16 file is never held as a
    whole state dict next to its converted twin.
    """
    path = Path(path)
    header = read_header(path)  # a clear error for a truncated or foreign file, before safetensors' own
    keys = {k: k for k in header if k != "__metadata__"} if keys is None else keys
    if weights:
        check_dtypes(header, path, [k for k in keys if k in header])  # an absent key: safetensors' error below
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f, one_torch_thread():
            # Every tensor first (views of the mapped file: nothing is read yet), then one pass over them: reading
            # each tensor's pages between get_tensor calls was 2-4x slower from disk (benchmarks/loading.py)
            mapped = {file_key: f.get_tensor(file_key) for file_key in keys}
            for file_key, key in keys.items():
                t = mapped.pop(file_key)
                if weights and not all_finite(t):
                    raise ModelFileError(f"{path}: tensor '{file_key}' holds NaN or inf values")
                out[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).to(device)
    except ModelFileError:
        raise
    except Exception as e:  # safetensors raises SafetensorError, OSError, ... without naming the file
        raise ModelFileError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return out


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, object] | None = None,
                 ) -> Path:
    """Write a safetensors file atomically (contiguous CPU copies; metadata values as strings)."""
    path = Path(path)
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = None if metadata is None else {k: str(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=meta)
    return path


def _shown(items: list[str]) -> str:
    return ", ".join(items[:SHOWN_KEYS]) + (", ..." if len(items) > SHOWN_KEYS else "")


def check_layout(found: Mapping[str, tuple], expected: Mapping[str, tuple], path, fmt: str,
                 file_key: Callable[[str], str] | str = "") -> None:
    """Strict key check: one `ModelFileError` listing missing, unexpected and mis-shaped keys, with counts.

    `file_key` turns a layout key into the file's own naming for the message: a prefix string (``net.``) or a
    function (the VAE's Wan <-> diffusers renames), so the user can find the key in their file.
    """
    name = file_key if callable(file_key) else (lambda k: f"{file_key}{k}")
    missing = sorted(name(k) for k in expected if k not in found)
    unexpected = sorted(name(k) for k in found if k not in expected)
    misshaped = sorted(f"{name(k)} {list(found[k])} (expected {list(expected[k])})"
                       for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or misshaped):
        return
    parts = [f"{len(items)} {label}" + (f": {_shown(items)}" if items else "")
             for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))]
    raise ModelFileError(f"{path} ({fmt}): keys do not match the layout; " + "; ".join(parts))


def required_shape(shapes: Mapping[str, tuple[int, ...]], key: str, path) -> tuple[int, ...]:
    """The shape of `key`, which a dimension is inferred from; its absence is a `ModelFileError`."""
    if key not in shapes:
        raise ModelFileError(f"{path}: missing key '{key}', needed to infer the model's dimensions")
    return tuple(shapes[key])


def count_indexed(keys, pattern: str) -> int:
    """1 + the highest index captured by `pattern` (e.g. ``blocks\\.(\\d+)\\.``) among `keys`; 0 if none."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0
