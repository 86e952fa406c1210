"""Which model does a command load, on which device, in which dtype? The model options every verb shares.

One parent parser (`model_parent`) gives every verb the same `--model`, per-file flags, `--device` and `--dtype`;
`model_kwargs` turns them into `load_anima`'s arguments after checking the device with a tiny tensor operation, so
that `--device cuda` on a machine without CUDA (or `--device banana`) is one line before any work, not a traceback
after it (torch only fails when the first tensor is moved).
"""

from __future__ import annotations

import argparse
from typing import Any

from anima_probe.errors import UsageError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype name -> torch dtype: the one table
FILE_ROLES = ("dit", "text-encoder", "vae", "qwen-tokenizer", "t5-tokenizer")


def model_parent() -> argparse.ArgumentParser:
    """The model options, as a parent parser (``add_parser(..., parents=[model_parent()])``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="model folder (default: the bundled toy world)")
    for role in FILE_ROLES:
        g.add_argument(f"--{role}", default=None, help=f"the {role.replace('-', ' ')} file or folder (overrides --model)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (checked with a tiny tensor op first)")
    g.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="the frozen model's dtype")
    return p


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def check_device(name: str):
    """`name` as a torch.device that works (a tiny tensor op ran on it), else a UsageError naming the flag."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name torch knows (cpu, cuda, cuda:N, mps)") from None
    try:
        (torch.ones(2, device=device) * 2).sum().item()
    except (RuntimeError, AssertionError) as err:  # torch asserts when it was built without CUDA
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--device {name}: not usable on this machine ({reason})") from None
    return device


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`load_anima`'s arguments from the shared options, the device checked first."""
    files = {r.replace("-", "_"): getattr(args, r.replace("-", "_")) for r in FILE_ROLES}
    return {"model": args.model, "device": check_device(args.device), "dtype": torch_dtype(args.dtype),
            **{k: v for k, v in files.items() if v}}
