"""Where does modulation guidance enter the frozen DiT? One injection mechanism for both families of source.

Answers: "if block i of the frozen Anima DiT reads its timestep modulation plus a vector v_i (per batch row), what
velocity comes out?" The vectors themselves (Eq. 3, schedules, CFG-row policies) come from ``modulation.py``; the
sampler that uses this is ``guided_sampling.py``; the distillation trainer's student forward uses it directly.

Where the vectors go (diffusers 0.42 ``CosmosTransformer3DModel.forward``, read in source): once per call it computes

    temb               (B, 3D) = time_embed.t_embedder(...)   # the AdaLN-LoRA vector        (hook point adaln_lora)
    embedded_timestep  (B, D)  = time_embed.norm(...)         # the t_embedding_norm output  (hook point t_embedding_norm)

and hands both, positionally, to every block, ``block(hidden, context, embedded_timestep, temb, ...)``, and to the
final layer, ``norm_out(hidden, embedded_timestep, temb)``. A forward pre-hook on block i therefore sees exactly
what block i reads and can change it for that block alone; nothing is inserted into the model.

- family ``pooled_text_proj`` (sorryhyun): block i reads ``embedded_timestep + v_i`` with v_i (B, D); the final
  layer reads ``embedded_timestep + v_final``. Each block's AdaLN heads then apply SiLU -> Linear to it.
- family ``cosmos`` (the paper's official Cosmos code, Anzhc's node): block i reads ``temb + v_i`` with v_i (B, 3D),
  i.e. ``scales[i] * pooled_emb_i`` lands on the pre-chunk (shift, scale, gate) triples of all three sub-layers; the
  final layer reads the unmodified ``temb`` (as the official code), so ``final`` must be None.

Hooks are removed in ``finally``, also when the forward raises (global hook state is the classic footgun).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from anima_probe.probes.hooks import resolve

POOLED_TEXT_PROJ = "pooled_text_proj"
COSMOS = "cosmos"
# family -> (block argument it edits, its positional index in block(...), width multiple of D)
_TARGET = {POOLED_TEXT_PROJ: ("embedded_timestep", 2, 1), COSMOS: ("temb", 3, 3)}
_FINAL_ARG = ("embedded_timestep", 1)  # norm_out(hidden, embedded_timestep, temb)
FAMILIES = tuple(_TARGET)


@dataclass(frozen=True)
class Modulation:
    """Per-block additive vectors for one model call: ``blocks[i]`` (R, W) or (W,) or None (block untouched),
    ``final`` (R, D) or None. R is 1 (broadcast) or the model batch; rows may differ (CFG cond/uncond rows)."""

    family: str
    blocks: tuple[torch.Tensor | None, ...]
    final: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.family not in _TARGET:
            raise ValueError(f"unknown modulation family {self.family!r}; choose from {FAMILIES}")
        if self.family == COSMOS and self.final is not None:
            raise ValueError("family 'cosmos' leaves the final layer unmodified (as the official code): final=None")
        widths = {v.shape[-1] for v in self.blocks if v is not None}
        if len(widths) > 1:
            raise ValueError(f"block vectors disagree on their width: {sorted(widths)}")

    @property
    def touched(self) -> list[int]:
        """Indices of the blocks that get a vector."""
        return [i for i, v in enumerate(self.blocks) if v is not None]

    @staticmethod
    def cat(parts: Sequence[Modulation]) -> Modulation:
        """Stack row groups (e.g. cond rows then uncond rows) into one batch. Parts must touch the same blocks and
        carry their full row count (R, W), so row r of the result is unambiguous."""
        family = {p.family for p in parts}
        if len(family) != 1 or len({len(p.blocks) for p in parts}) != 1:
            raise ValueError("Modulation.cat needs parts of one family and one depth")
        return Modulation(family.pop(), tuple(_cat_rows([p.blocks[i] for p in parts])
                                              for i in range(len(parts[0].blocks))),
                          _cat_rows([p.final for p in parts]))


def _cat_rows(vecs: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(v is None for v in vecs):
        return None
    if any(v is None or v.ndim != 2 for v in vecs):
        raise ValueError("Modulation.cat: every part needs (rows, W) vectors at the same blocks "
                         "(a None next to a vector has no row count to fill)")
    return torch.cat(vecs)  # (R1 + R2 + ..., W)


def build(family: str, vector_at: Callable[[float], torch.Tensor | None], weights: torch.Tensor, *,
          final_weight: float | None = 0.0, active: torch.Tensor | None = None,
          scales: torch.Tensor | None = None) -> Modulation:
    """Per-block vectors from one rule ``vector_at(w) -> (R, W)`` (or None: nothing) at each block's weight w(i).

    ``pooled_text_proj``: every block gets ``vector_at(w(i))`` (the base projection reaches all blocks, as it was
    trained); the final layer gets ``vector_at(final_weight)`` (sorryhyun's final_w, default 0: the base alone),
    or nothing when final_weight is None.
    ``cosmos``: only blocks with ``active[i]`` get ``scales[i] * vector_at(w(i))`` (the official code leaves blocks
    outside [start, end] at the plain temb, base included); no final vector, so final_weight must be 0 or None.
    ``vector_at`` is called once per block here, never per step: build once, reuse for every model call.
    """
    if family == POOLED_TEXT_PROJ:
        blocks = tuple(vector_at(float(w)) for w in weights)
        final = None if final_weight is None else vector_at(float(final_weight))
        return Modulation(family, blocks, final)
    if family != COSMOS:
        raise ValueError(f"unknown modulation family {family!r}; choose from {FAMILIES}")
    if scales is None or active is None:
        raise ValueError("family 'cosmos' needs the adapter's scales (N, 3D) and the active-block mask (N,)")
    if final_weight:
        raise ValueError("family 'cosmos' has no final-layer vector (the official code leaves norm_out alone)")
    if not (len(weights) == len(active) == scales.shape[0]):
        raise ValueError(f"cosmos: {len(weights)} weights, {len(active)} active flags, {scales.shape[0]} scales rows")
    blocks = []
    for i, w in enumerate(weights):
        v = vector_at(float(w)) if active[i] else None
        blocks.append(None if v is None else scales[i] * v)  # (R, 3D)
    return Modulation(family, tuple(blocks))


def constant(family: str, vector: torch.Tensor, num_blocks: int, *, final: bool = True) -> Modulation:
    """The same vector (R, W) on every block (and the final layer for pooled_text_proj, unless final=False):
    the distillation student's forward, ``t_emb + P(pool(p))`` everywhere, with no guidance term."""
    if family == COSMOS:
        raise ValueError("for family 'cosmos' use build(...) with the adapter's per-block scales")
    return Modulation(family, (vector,) * num_blocks, vector if final else None)


def _add(value: torch.Tensor | None, vec: torch.Tensor, where: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{where}: the model passed None here (a DiT without AdaLN-LoRA?); nothing to modulate")
    vec = vec.to(device=value.device, dtype=value.dtype)
    vec = vec.unsqueeze(0) if vec.ndim == 1 else vec  # (R, W)
    if vec.shape[-1] != value.shape[-1]:
        raise ValueError(f"{where}: vector width {vec.shape[-1]} != the model's {value.shape[-1]}")
    if vec.shape[0] not in (1, value.shape[0]):
        raise ValueError(f"{where}: vector has {vec.shape[0]} rows but the model batch has {value.shape[0]}")
    if value.ndim == 3:  # per-token timesteps (B, THW, W): one vector per row, broadcast over tokens
        vec = vec.unsqueeze(1)
    return value + vec


def _pre_hook(vec: torch.Tensor, name: str, index: int, where: str):
    def pre(module, args, kwargs):
        if name in kwargs:
            return args, {**kwargs, name: _add(kwargs[name], vec, where)}
        if len(args) <= index:
            raise ValueError(f"{where}: expected {name!r} as positional argument {index}, got {len(args)} args")
        args = (*args[:index], _add(args[index], vec, where), *args[index + 1:])
        return args, kwargs
    return pre


@contextlib.contextmanager
def inject(anima, modulation: Modulation) -> Iterator[Modulation]:
    """Run the DiT with ``modulation`` added where its family says; every hook is removed in ``finally``."""
    if len(modulation.blocks) != anima.num_blocks:
        raise ValueError(f"modulation has {len(modulation.blocks)} block vectors, the model {anima.num_blocks} blocks")
    name, index, mult = _TARGET[modulation.family]
    width = mult * anima.dit_config.hidden
    handles = []
    try:
        for i in modulation.touched:
            point = resolve(anima, f"blocks.{i}")
            if modulation.blocks[i].shape[-1] != width:
                raise ValueError(f"{point.name}: {modulation.family} vectors are {mult}*D = {width} wide, "
                                 f"got {modulation.blocks[i].shape[-1]}")
            module = operator.attrgetter(point.path)(anima)
            hook = _pre_hook(modulation.blocks[i], name, index, f"{point.name} {name}")
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        if modulation.final is not None:
            point = resolve(anima, "final_layer")
            hook = _pre_hook(modulation.final, *_FINAL_ARG, f"final_layer {_FINAL_ARG[0]}")
            handles.append(operator.attrgetter(point.path)(anima).register_forward_pre_hook(hook, with_kwargs=True))
        yield modulation
    finally:
        for h in handles:
            h.remove()
