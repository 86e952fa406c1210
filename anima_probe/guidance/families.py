"""What is a family of modulation source? Where its vectors enter the DiT, how wide they are, how its pooled input and
per-block vectors are made, its CFG-row default, and how its file is told apart, loaded and saved.

One record per family (``Family``) in one registry. The guided sampler, the dose experiment, the distillation trainer
and the CLI read everything family-specific from here, so adding a family is one new record passed to ``register``
and no other file changes (a test registers a toy third family and samples and distils with it).

    pooled_text_proj (sorryhyun)  max-pooled crossattn_emb -> P -> (B, D) added to every block's embedded_timestep
                                  and to the final layer's; its port's CFG rows: per-row-base
    cosmos (the paper, Anzhc)     CLIP-L pooled -> P -> m (B, 3D); block i adds scales[i] * m to its temb, on the
                                  scheduled blocks only; the final layer keeps the plain temb; CFG rows: official

Facts: docs/modulation-guidance.md ("Where the vector enters", "Side by side"); the file formats are in
``sources.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anima_probe.errors import InputError, MissingFileError
from anima_probe.guidance.eq3 import CFGRowPolicy
from anima_probe.guidance.sources import (
    CosmosPooledAdapter,
    PooledTextProjection,
    load_cosmos_pooled_adapter,
    load_pooled_text_proj,
    save_cosmos_pooled_adapter,
    save_pooled_text_proj,
)
from anima_probe.model.files import ModelFileError, tensor_shapes
from anima_probe.probes.pooling import pool_named

POOLED_TEXT_PROJ = "pooled_text_proj"
COSMOS = "cosmos"


@dataclass(frozen=True)
class Family:
    """Everything family-specific, as data and small functions (``source`` is the family's trainable module)."""

    name: str
    block_arg: str  # the DiT block argument its vectors are added to (hook point ``blocks.{i}.<block_arg>``)
    width: int  # vector width as a multiple of the model width D
    final_arg: str | None  # the final layer's argument it also modulates; None: the final layer is left alone
    every_block: bool  # the base reaches every block whatever the schedule (False: the scheduled blocks only)
    default_policy: CFGRowPolicy  # what the CFG uncond row gets in the family's own port
    needs_clip: bool  # its pooled input comes from CLIP-L, not from Anima's own text encoding
    pool: Callable  # (texts, encoded text (TextConditioning) of those texts, clip, pooling) -> (N, P)
    source_type: type[nn.Module]
    new_source: Callable[[int, int, int], nn.Module]  # (D, blocks, P) -> a fresh source that is a no-op
    project: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (source, pooled (B, P)) -> (B, width * D)
    block_scales: Callable[[nn.Module], torch.Tensor] | None  # source -> (N, width * D) per-block factors, or None
    check: Callable[[nn.Module, object], None]  # (source, anima): raise ValueError if sampling cannot use it
    key: str  # a key only this family's files hold: tells safetensors files apart
    suffixes: tuple[str, ...]  # file types its loader reads
    load: Callable[[Path, object], nn.Module]  # (path, anima) -> the source, checked against the model
    save: Callable[[nn.Module, Path], Path]
    file_name: str  # what distillation writes

    def require_clip(self, clip) -> None:
        if self.needs_clip and clip is None:
            raise InputError(f"family {self.name!r} reads CLIP-L pooled text: pass a CLIP model (--clip FILE)")

    def block_vectors(self, vector_at: Callable[[int], torch.Tensor | None], num_blocks: int,
                      active: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> tuple:
        """Block i's vector: ``vector_at(i)`` on every block, or (``every_block`` False) on the ``active`` ones only
        (None: all), times ``scales[i]`` for a family with per-block scales. None: the block is left alone."""
        if self.block_scales is not None and scales is None:
            raise InputError(f"family {self.name!r} needs the adapter's scales (N, {self.width}D)")
        out = []
        for i in range(num_blocks):
            v = vector_at(i) if self.every_block or active is None or active[i] else None
            out.append(v if v is None or scales is None else scales[i] * v)  # (R, W)
        return tuple(out)


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in REGISTRY:
        raise InputError(f"modulation family {family.name!r} is already registered")
    REGISTRY[family.name] = family
    return family


def get(name: str) -> Family:
    if name not in REGISTRY:
        raise InputError(f"unknown modulation family {name!r}; choose from {tuple(REGISTRY)}")
    return REGISTRY[name]


def family_of(source: nn.Module) -> Family:
    for family in REGISTRY.values():
        if isinstance(source, family.source_type):
            return family
    raise InputError(f"{type(source).__name__} is the source of no registered family {tuple(REGISTRY)}")


def guidance_delta(source: nn.Module, pos_pooled: torch.Tensor, neg_pooled: torch.Tensor) -> torch.Tensor:
    """``P(p+) - P(p-)`` with the source's own projection, computed once per prompt pair and reused at every step and
    block (each side projected alone, so the delta does not depend on what else is in a batch)."""
    project = family_of(source).project
    return project(source, pos_pooled) - project(source, neg_pooled)


def load_source(path, anima) -> nn.Module:
    """A modulation file of any registered family, told apart by a key only that family's files hold (safetensors)
    or by its file type, and checked against the model's width and depth."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such modulation file")
    if path.suffix == ".safetensors":
        keys = set(tensor_shapes(path))
        found = [f for f in REGISTRY.values() if f.key in keys]
        if not found:
            kinds = " nor ".join(f"a {f.name} (key {f.key!r})" for f in REGISTRY.values())
            raise ModelFileError(f"{path}: neither {kinds}; keys: {sorted(keys)[:6]}")
    else:
        found = [f for f in REGISTRY.values() if path.suffix in f.suffixes]
        if len(found) != 1:
            raise ModelFileError(f"{path}: {len(found)} modulation families read {path.suffix!r} files; "
                                      "save the source as .safetensors")
    return found[0].load(path, anima)


# ------------------------------------------------------------------------------- the two published families
def pool_crossattn(texts: list[str], tc, clip, pooling: str) -> torch.Tensor:
    """Anima's own crossattn_emb of the texts, pooled (sorryhyun's ``max_padded`` by default): (N, Dt) float32."""
    return pool_named(tc.crossattn_emb.float(), tc.t5_mask, pooling)


def pool_clip(texts: list[str], tc, clip, pooling: str) -> torch.Tensor:
    """CLIP-L ``pooler_output`` of the texts (the official Cosmos adapter's input): (N, 768)."""
    return clip.pooled(texts)


def _sampleable_projection(proj: PooledTextProjection, anima) -> None:
    if proj.sigma_film is not None:
        raise InputError("this pooled_text_proj has sigma-FiLM armed: its delta depends on the step's t_emb, which "
                         "the once-per-prompt guided sampler does not support (the author reports FiLM inert)")


def _matching_adapter(adapter: CosmosPooledAdapter, anima) -> None:
    if adapter.num_blocks != anima.num_blocks or adapter.model_channels != anima.dit_config.hidden:
        raise InputError(f"cosmos adapter is for {adapter.num_blocks} blocks x D={adapter.model_channels}, the model "
                         f"has {anima.num_blocks} x {anima.dit_config.hidden}")


register(Family(
    name=POOLED_TEXT_PROJ, block_arg="embedded_timestep", width=1, final_arg="embedded_timestep", every_block=True,
    default_policy=CFGRowPolicy.PER_ROW_BASE, needs_clip=False, pool=pool_crossattn,
    source_type=PooledTextProjection, new_source=lambda d, n, p: PooledTextProjection(d, text_dim=p),
    project=lambda proj, pooled: proj(pooled), block_scales=None, check=_sampleable_projection,
    key="0.weight", suffixes=(".safetensors",),
    load=lambda path, anima: load_pooled_text_proj(path, model_channels=anima.dit_config.hidden),
    save=save_pooled_text_proj, file_name="pooled_text_proj.safetensors"))

register(Family(
    name=COSMOS, block_arg="temb", width=3, final_arg=None, every_block=False,
    default_policy=CFGRowPolicy.OFFICIAL, needs_clip=True, pool=pool_clip,
    source_type=CosmosPooledAdapter, new_source=lambda d, n, p: CosmosPooledAdapter(d, n, clip_dim=p),
    project=lambda adapter, pooled: adapter.project(pooled), block_scales=lambda adapter: adapter.scales,
    check=_matching_adapter, key="scales", suffixes=(".safetensors", ".pt", ".pth", ".bin", ".ckpt"),
    load=lambda path, anima: load_cosmos_pooled_adapter(path, anima.dit_config.hidden, anima.num_blocks),
    save=save_cosmos_pooled_adapter, file_name="cosmos_pooled_adapter.safetensors"))
