"""Where does modulation guidance enter the frozen DiT? Per-block vectors, and the small edit that adds them.

Answers: "if block i of the frozen Anima DiT reads its timestep modulation plus a vector v_i (per batch row), what
velocity comes out?" The vectors themselves come from Eq. 3 and a schedule (``guided.py``) or from the distillation
student (``training/distill.py``); which argument of which module they go to is the family's (``families.py``).

Where the vectors go (diffusers 0.42 ``CosmosTransformer3DModel.forward``, read in source): once per call it computes

    temb               (B, 3D) = time_embed.t_embedder(...)   # the AdaLN-LoRA vector        (hook point adaln_lora)
    embedded_timestep  (B, D)  = time_embed.norm(...)         # the t_embedding_norm output  (hook point t_embedding_norm)

and hands both, positionally, to every block, ``block(hidden, context, embedded_timestep, temb, ...)``, and to the
final layer, ``norm_out(hidden, embedded_timestep, temb)``. An edit of the hook point ``blocks.{i}.temb`` (or
``blocks.{i}.embedded_timestep``, ``final_layer.embedded_timestep``) therefore changes exactly what block i reads, for
that block alone; nothing is inserted into the model. ``inject`` registers one ``hooks.add_vector`` edit per touched
block (and the final layer) through ``probes.hooks``, the mechanism the probes use, so hooks are removed in
``finally`` also when the forward raises (global hook state is the classic footgun).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from anima_probe.errors import InputError
from anima_probe.guidance import families
from anima_probe.probes.hooks import add_vector, hooks


@dataclass(frozen=True)
class Modulation:
    """Per-block additive vectors for one model call: ``blocks[i]`` (R, W) or (W,) or None (block untouched),
    ``final`` (R, D) or None. R is 1 (broadcast) or the model batch; rows may differ (CFG cond/uncond rows)."""

    family: str
    blocks: tuple[torch.Tensor | None, ...]
    final: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if families.get(self.family).final_arg is None and self.final is not None:
            raise InputError(f"family {self.family!r} leaves the final layer unmodified (as its port): final=None")
        widths = {v.shape[-1] for v in self.blocks if v is not None}
        if len(widths) > 1:
            raise InputError(f"block vectors disagree on their width: {sorted(widths)}")

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
            raise InputError("Modulation.cat needs parts of one family and one depth")
        return Modulation(family.pop(), tuple(_cat_rows([p.blocks[i] for p in parts])
                                              for i in range(len(parts[0].blocks))),
                          _cat_rows([p.final for p in parts]))


def _cat_rows(vecs: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(v is None for v in vecs):
        return None
    if any(v is None or v.ndim != 2 for v in vecs):
        raise InputError("Modulation.cat: every part needs (rows, W) vectors at the same blocks "
                         "(a None next to a vector has no row count to fill)")
    return torch.cat(vecs)  # (R1 + R2 + ..., W)


def build(family: str, vector_at: Callable[[float], torch.Tensor | None], weights: torch.Tensor, *,
          final_weight: float | None = 0.0, active: torch.Tensor | None = None,
          scales: torch.Tensor | None = None) -> Modulation:
    """Per-block vectors from one rule ``vector_at(w) -> (R, W)`` (or None: nothing) at each block's weight w(i),
    laid out by the family (``Family.block_vectors``):

    ``pooled_text_proj``: every block gets ``vector_at(w(i))`` (the base projection reaches all blocks, as it was
    trained); the final layer gets ``vector_at(final_weight)`` (sorryhyun's final_w, default 0: the base alone),
    or nothing when final_weight is None.
    ``cosmos``: only blocks with ``active[i]`` get ``scales[i] * vector_at(w(i))`` (the official code leaves blocks
    outside [start, end] at the plain temb, base included); no final vector, so final_weight must be 0 or None.
    ``vector_at`` is called once per block here, never per step: build once, reuse for every model call.
    """
    fam = families.get(family)
    if fam.final_arg is None and final_weight:
        raise InputError(f"family {family!r} has no final-layer vector (its port leaves norm_out alone)")
    counts = [("weights", len(weights)), ("active flags", None if active is None else len(active)),
              ("scales rows", None if scales is None else scales.shape[0])]
    if len({n for _, n in counts if n is not None}) > 1:
        raise InputError(f"{family}: " + ", ".join(f"{n} {what}" for what, n in counts if n is not None))
    blocks = fam.block_vectors(lambda i: vector_at(float(weights[i])), len(weights), active, scales)
    final = None if fam.final_arg is None or final_weight is None else vector_at(float(final_weight))
    return Modulation(family, blocks, final)


def constant(family: str, vector: torch.Tensor, num_blocks: int, *, final: bool = True) -> Modulation:
    """The same vector (R, W) on every block (and the final layer, for a family that touches it, unless
    final=False): the distillation student's forward, ``t_emb + P(pool(p))`` everywhere, with no guidance term."""
    fam = families.get(family)
    if fam.block_scales is not None:
        raise InputError(f"for family {family!r} use build(...) with the source's per-block scales")
    return Modulation(family, (vector,) * num_blocks, vector if final and fam.final_arg is not None else None)


@contextlib.contextmanager
def inject(anima, modulation: Modulation) -> Iterator[Modulation]:
    """Run the DiT with ``modulation`` added where its family says; every hook is removed in ``finally``."""
    if len(modulation.blocks) != anima.num_blocks:
        raise InputError(f"modulation has {len(modulation.blocks)} block vectors, the model {anima.num_blocks} blocks")
    fam = families.get(modulation.family)
    width, arg = fam.width * anima.dit_config.hidden, fam.block_arg
    edits = {}
    for i in modulation.touched:
        if modulation.blocks[i].shape[-1] != width:
            raise InputError(f"blocks.{i}: {fam.name} vectors are {fam.width}*D = {width} wide, "
                             f"got {modulation.blocks[i].shape[-1]}")
        edits[f"blocks.{i}.{arg}"] = add_vector(modulation.blocks[i], where=f"blocks.{i} {arg}")
    if modulation.final is not None:
        edits[f"final_layer.{fam.final_arg}"] = add_vector(modulation.final, where=f"final_layer {fam.final_arg}")
    with hooks(anima, edits):
        yield modulation
