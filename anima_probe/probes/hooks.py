"""Where in Anima can a probe look or write? Named hook points on the frozen model, and the two ways to use them.

Hooks go on existing modules by dotted path (after baukit's nethook); nothing is inserted into the model. Research
names resolve to real module paths:

    prompt_embeds            text_encoder                               out (B, Lq, Dq) Qwen3 last hidden state
    crossattn_emb            adapter                                    out (B, 512, D_text) what the DiT attends to
    t_embedding_norm         transformer.time_embed.norm                in  (B, D) raw sinusoid  ("before norm")
                                                                        out (B, D) normalised    ("after norm")
    adaln_lora               transformer.time_embed.t_embedder          out (B, 3D) shared by every block
    blocks.{i}               transformer.transformer_blocks.{i}         out (B, N, D) residual stream after block i
    final_layer              transformer.norm_out                       in  (B, N, D) the feature before the head

A point is read on its output unless the name ends in `.input` (`t_embedding_norm.input` = "before norm").
`capture` records values with the call index and the sampler step apart: with CFG the denoiser runs twice per step,
so the two differ (nnsight's warning). `patch` edits a value in flight. Both always remove their hooks in `finally`.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("anima_probe_step", default=None)

ALIASES = {
    "prompt_embeds": "text_encoder",
    "crossattn_emb": "adapter",
    "t_embedding_norm": "transformer.time_embed.norm",
    "adaln_lora": "transformer.time_embed.t_embedder",
    "final_layer": "transformer.norm_out",
}
_BLOCK = re.compile(r"^blocks\.(\d+)$")


@dataclass(frozen=True)
class HookPoint:
    name: str  # the research name asked for
    path: str  # dotted module path from the Anima object
    side: str  # "input" (the first positional argument) or "output"


def hook_point_names(anima) -> list[str]:
    names = list(ALIASES) + [f"blocks.{i}" for i in range(anima.num_blocks)]
    return names + [n + ".input" for n in names]


def resolve(anima, name: str) -> HookPoint:
    """Research name (or a raw dotted module path) -> HookPoint; unknown names suggest the closest ones."""
    base, side = (name[: -len(".input")], "input") if name.endswith(".input") else (name, "output")
    if base in ALIASES:
        path = ALIASES[base]
    elif m := _BLOCK.match(base):
        if int(m.group(1)) >= anima.num_blocks:
            raise KeyError(f"hook point {name!r}: the model has {anima.num_blocks} blocks (0..{anima.num_blocks - 1})")
        path = f"transformer.transformer_blocks.{m.group(1)}"
    else:
        path = base
    try:
        _module(anima, path)
    except AttributeError:
        close = difflib.get_close_matches(name, hook_point_names(anima), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list(ALIASES) + ['blocks.{i}'])}"
        raise KeyError(f"unknown hook point {name!r}{hint}") from None
    return HookPoint(name, path, side)


def _module(anima, path: str) -> torch.nn.Module:
    obj = anima
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        if obj is None:
            raise AttributeError(path)
    if not isinstance(obj, torch.nn.Module):
        raise AttributeError(path)
    return obj


def _value(out):
    """The tensor a point carries: transformers returns a ModelOutput, diffusers plain tensors."""
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def _replace(out, new):
    if hasattr(out, "last_hidden_state"):
        out.last_hidden_state = new
        return out
    return new


# ----------------------------------------------------------------------------------------------------------------
# Steps


@contextlib.contextmanager
def sampler_step(i: int) -> Iterator[None]:
    """Mark the model calls inside as belonging to sampler step i."""
    token = _STEP.set(i)
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> int | None:
    return _STEP.get()


# ----------------------------------------------------------------------------------------------------------------
# Capture and patch


class StopForward(Exception):
    """Raised after a `stop=True` capture: the rest of the forward is not needed (e.g. no DiT blocks for text)."""


@dataclass
class Record:
    call: int  # how many times this point had fired before, in this context
    step: int | None  # sampler step, when the caller marked one with sampler_step()
    value: torch.Tensor


@dataclass
class Capture:
    point: HookPoint
    records: list[Record] = field(default_factory=list)

    @property
    def value(self) -> torch.Tensor:
        """The last recorded value."""
        if not self.records:
            raise RuntimeError(f"hook point {self.point.name!r} never fired")
        return self.records[-1].value

    def at_step(self, step: int) -> list[torch.Tensor]:
        return [r.value for r in self.records if r.step == step]


def _register(module: torch.nn.Module, side: str, fn: Callable) -> torch.utils.hooks.RemovableHandle:
    if side == "input":
        def pre(mod, args, kwargs):
            new = fn(args[0])
            return (new, *args[1:]), kwargs
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, out):
        return _replace(out, fn(_value(out)))
    return module.register_forward_hook(post)


@contextlib.contextmanager
def hooks(anima, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[dict[str, HookPoint]]:
    """The one generic mechanism: run `fn(value) -> value` at each named point; hooks removed in `finally`."""
    points = {name: resolve(anima, name) for name in edits}
    handles = []
    try:
        for name, point in points.items():
            handles.append(_register(_module(anima, point.path), point.side, edits[name]))
        yield points
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(anima, names: str | list[str], stop: bool = False, detach: bool = True) -> Iterator[dict[str, Capture]]:
    """Record values at the named points. With stop=True the forward ends once every point has fired."""
    names = [names] if isinstance(names, str) else list(names)
    caps = {n: Capture(resolve(anima, n)) for n in names}

    def recorder(name):
        def fn(v):
            cap = caps[name]
            cap.records.append(Record(len(cap.records), current_step(), v.detach() if detach else v))
            if stop and all(c.records for c in caps.values()):
                raise StopForward
            return v
        return fn

    with contextlib.suppress(StopForward), hooks(anima, {n: recorder(n) for n in names}):
        yield caps


def patch(anima, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]):
    """Edit values in flight: `with patch(anima, {"t_embedding_norm": add_vector(v)}): anima.velocity(...)`."""
    return hooks(anima, edits)


def add_vector(vector: torch.Tensor, alpha: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit that adds alpha·vector (broadcast over the batch) to the value."""
    def fn(v: torch.Tensor) -> torch.Tensor:
        return v + alpha * vector.to(device=v.device, dtype=v.dtype)
    return fn
