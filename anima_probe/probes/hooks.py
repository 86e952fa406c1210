"""Where in Anima can a probe look or write? Named hook points on the frozen model, and the one mechanism that uses
them: probes capture and patch through it, modulation guidance injects through it, distillation trains through it.

Hooks go on existing modules by dotted path (after baukit's nethook); nothing is inserted into the model. Research
names resolve to real module paths:

    prompt_embeds            text_encoder                               out (B, Lq, Dq) Qwen3 last hidden state
    crossattn_emb            adapter                                    out (B, 512, D_text) what the DiT attends to
    t_embedding_norm         transformer.time_embed.norm                in  (B, D) raw sinusoid  ("before norm")
                                                                        out (B, D) normalised    ("after norm")
    adaln_lora               transformer.time_embed.t_embedder          out (B, 3D) shared by every block
    blocks.{i}               transformer.transformer_blocks.{i}         out (B, N, D) residual stream after block i
    final_layer              transformer.norm_out                       in  (B, N, D) the feature before the head

A point is read on its module's output unless the name goes on with an argument of that module's ``forward``:
``.input`` is its first argument (``t_embedding_norm.input`` = "before norm"), any other suffix names an argument,
found as a keyword or at its position in the signature (diffusers passes the block inputs positionally):

    blocks.{i}.embedded_timestep   in (B, D)   what block i's AdaLN heads read (the t_embedding_norm output)
    blocks.{i}.temb                in (B, 3D)  block i's AdaLN-LoRA term (the adaln_lora output)
    final_layer.embedded_timestep  in (B, D)   what the final layer's AdaLN reads

`capture` records values with the call index and the sampler step apart: the samplers mark their steps
(`sampler_step`), and with CFG as two model calls the denoiser runs twice per step, so the two differ (nnsight's
warning). `patch` edits a value in flight. Both go through `hooks`, which always removes its hooks in `finally`.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from anima_probe.errors import InputError, UnknownNameError

_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("anima_probe_step", default=None)

ALIASES = {
    "prompt_embeds": "text_encoder",
    "crossattn_emb": "adapter",
    "t_embedding_norm": "transformer.time_embed.norm",
    "adaln_lora": "transformer.time_embed.t_embedder",
    "final_layer": "transformer.norm_out",
}
_BLOCK = re.compile(r"^blocks\.(\d+)$")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class HookPoint:
    name: str  # the research name asked for
    path: str  # dotted module path from the Anima object
    arg: str | None = None  # None: the module's output; else the forward argument read (by name)
    index: int | None = None  # that argument's position in forward(...); None: keyword-only


def _find(anima, path: str) -> torch.nn.Module | None:
    obj = anima
    for part in path.split("."):  # a ModuleList's children are attributes "0", "1", ... too
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.nn.Module) else None


def _module_path(anima, base: str) -> str:
    if base in ALIASES:
        return ALIASES[base]
    if m := _BLOCK.match(base):
        if int(m.group(1)) >= anima.num_blocks:
            raise UnknownNameError(f"hook point {base!r}: the model has {anima.num_blocks} blocks (0..{anima.num_blocks - 1})")
        return f"transformer.transformer_blocks.{m.group(1)}"
    return base


def _arguments(module: torch.nn.Module) -> dict[str, int | None]:
    """forward's named arguments -> their position (None: keyword-only); *args / **kwargs have no name to hook."""
    func = getattr(module.forward, "__func__", None)  # a method: one signature per class, read once
    return _signature(func, 1) if func is not None else _signature(module.forward, 0)


@functools.lru_cache(maxsize=256)
def _signature(forward: Callable, skip: int) -> dict[str, int | None]:
    # inspect.signature costs ~70 us; inject resolves one point per block on every call, so read each class once
    params = [p for p in list(inspect.signature(forward).parameters.values())[skip:]
              if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    positional = [p.name for p in params if p.kind in _POSITIONAL]
    return {p.name: positional.index(p.name) if p.name in positional else None for p in params}


def hook_point_names(anima) -> list[str]:
    names = []
    for base in list(ALIASES) + [f"blocks.{i}" for i in range(anima.num_blocks)]:
        module = _find(anima, _module_path(anima, base))
        if module is not None:  # e.g. no text encoder in a model loaded without one
            names += [base, f"{base}.input"] + [f"{base}.{arg}" for arg in _arguments(module)]
    return names


def resolve(anima, name: str) -> HookPoint:
    """Research name (or a raw dotted module path), optionally + ``.input`` or ``.<argument>`` -> HookPoint;
    unknown names suggest the closest ones."""
    path = _module_path(anima, name)
    if _find(anima, path) is not None:
        return HookPoint(name, path)
    base, _, arg = name.rpartition(".")
    module = _find(anima, path := _module_path(anima, base)) if base else None
    if module is not None:
        args = _arguments(module)
        if arg == "input" and args:
            first = next(iter(args))
            return HookPoint(name, path, first, args[first])
        if arg in args:
            return HookPoint(name, path, arg, args[arg])
    close = difflib.get_close_matches(name, hook_point_names(anima), n=3, cutoff=0.5)
    known = list(ALIASES) + ["blocks.{i}", "blocks.{i}.<argument>"]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    raise UnknownNameError(f"unknown hook point {name!r}{hint}")


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
    """Mark the model calls inside as belonging to sampler step i (the samplers do this for every step)."""
    token = _STEP.set(i)
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> int | None:
    return _STEP.get()


# ----------------------------------------------------------------------------------------------------------------
# The mechanism: hooks, and capture / patch on top of it


class StopForward(Exception):
    """Raised after a `stop=True` capture: the rest of the forward is not needed (e.g. no DiT blocks for text)."""


@dataclass
class Record:
    call: int  # how many times this point had fired before, in this context
    step: int | None  # sampler step, when the call ran inside sampler_step()
    value: torch.Tensor | None  # None where the model passed None (e.g. temb of a DiT without AdaLN-LoRA)


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


def _register(module: torch.nn.Module, point: HookPoint, fn: Callable) -> torch.utils.hooks.RemovableHandle:
    if point.arg is None:
        def post(mod, args, out):
            return _replace(out, fn(_value(out)))
        return module.register_forward_hook(post)

    def pre(mod, args, kwargs):
        if point.arg in kwargs:
            return args, {**kwargs, point.arg: fn(kwargs[point.arg])}
        i = point.index
        if i is None or len(args) <= i:
            raise InputError(f"hook point {point.name!r}: the call passed no {point.arg!r} (positional argument "
                             f"{i} or keyword); it got {len(args)} positional arguments")
        return (*args[:i], fn(args[i]), *args[i + 1:]), kwargs
    return module.register_forward_pre_hook(pre, with_kwargs=True)


@contextlib.contextmanager
def hooks(anima, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[dict[str, HookPoint]]:
    """The one generic mechanism: run `fn(value) -> value` at each named point; hooks removed in `finally`."""
    points = {name: resolve(anima, name) for name in edits}
    handles = []
    try:
        for name, point in points.items():
            handles.append(_register(_find(anima, point.path), point, edits[name]))
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
            cap.records.append(Record(len(cap.records), current_step(), v.detach() if detach and v is not None else v))
            if stop and all(c.records for c in caps.values()):
                raise StopForward
            return v
        return fn

    with contextlib.suppress(StopForward), hooks(anima, {n: recorder(n) for n in names}):
        yield caps


def patch(anima, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]):
    """Edit values in flight: `with patch(anima, {"t_embedding_norm": add_vector(v)}): anima.velocity(...)`."""
    return hooks(anima, edits)


def add_vector(vector: torch.Tensor, alpha: float = 1.0, where: str = "add_vector") -> Callable:
    """An edit that adds alpha·vector: (W,) for every row, or (R, W) with R = 1 or the model batch (row r to row r);
    a per-token value (B, T, W) gets each row's vector on every token. Errors name ``where``."""
    def fn(v: torch.Tensor | None) -> torch.Tensor:
        if v is None:
            raise InputError(f"{where}: the model passed None here (a DiT without AdaLN-LoRA?); nothing to add to")
        vec = vector.to(device=v.device, dtype=v.dtype)
        vec = vec.unsqueeze(0) if vec.ndim == 1 else vec  # (R, W)
        if vec.shape[-1] != v.shape[-1]:
            raise InputError(f"{where}: vector width {vec.shape[-1]} != the model's {v.shape[-1]}")
        if vec.shape[0] not in (1, v.shape[0]):
            raise InputError(f"{where}: vector has {vec.shape[0]} rows but the model batch has {v.shape[0]}")
        if v.ndim == 3:  # per-token values (B, T, W): one vector per row, broadcast over tokens
            vec = vec.unsqueeze(1)  # (R, 1, W)
        return v + (vec if alpha == 1.0 else alpha * vec)
    return fn
