"""T-LoRA: does masking a LoRA's rank by noise level (few components near pure noise) change what it does?

T-LoRA (Soboleva et al., AAAI 2026, arXiv 2507.05964) as sorryhyun's anima_lora uses it
(docs/modulation-guidance.md, "LoRA variants as anima_probe builds them"): a binary mask in the LoRA bottleneck
keeps the first r(u) of R_max components,

    r(u) = floor(u^alpha * (R_max - R_min) + R_min),   u = 1 - sigma   (sigma in [0, 1] is Anima's timestep),

R_min = 1, alpha = 1, one mask shared by every adapted Linear. peft has no timestep-dependent rank, so the mask is
the smallest addition we could make to a peft LoRA: a forward hook on each `lora_A` that multiplies its (..., R)
output by the mask. The sigma of the current forward reaches the hooks through a forward pre-hook on the
transformer that reads the DiT call's `timestep` argument (per batch row, so CFG halves and training batches with
mixed sigmas each get their own mask); there is no global state, and `remove()` takes every hook off.

A T-LoRA file is a plain LoRA file (kohya keys) plus its schedule in the safetensors metadata (`tlora` key,
JSON). ComfyUI, which ignores the metadata, applies it as the full-rank LoRA at every step.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

from anima_probe.adapters.lora import LoraWeights

METADATA_KEY = "tlora"


@dataclass(frozen=True)
class TLoraSchedule:
    """The rank schedule: R_max is the LoRA's rank."""

    max_rank: int
    min_rank: int = 1
    alpha: float = 1.0

    def __post_init__(self):
        if not 1 <= self.min_rank <= self.max_rank:
            raise ValueError(f"T-LoRA needs 1 <= min_rank <= max_rank, got {self.min_rank} and {self.max_rank}")
        if self.alpha <= 0:
            raise ValueError(f"T-LoRA alpha must be > 0, got {self.alpha}")

    def ranks(self, sigma: torch.Tensor) -> torch.Tensor:
        """Active components at each sigma: (B,) long in [min_rank, max_rank]."""
        u = (1.0 - sigma.float().clamp(0.0, 1.0)) ** self.alpha  # (B,)
        r = torch.floor(u * (self.max_rank - self.min_rank) + self.min_rank + 1e-6)  # 1e-6: u = 1 must give R_max
        return r.long()

    def mask(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B, R_max) 0/1: component j is on where j < r(sigma)."""
        j = torch.arange(self.max_rank, device=sigma.device)  # (R,)
        return (j[None, :] < self.ranks(sigma)[:, None]).to(torch.float32)  # (B, R)


def _timestep(args: tuple, kwargs: dict) -> torch.Tensor:
    t = kwargs["timestep"] if "timestep" in kwargs else args[1]  # CosmosTransformer3DModel(hidden_states, timestep)
    return t.reshape(t.shape[0], -1)[:, 0] if t.ndim > 1 else t.reshape(-1)  # (B,)


class TLora:
    """The mask hooks of adapter `name` on its peft layers; `remove()` (or leaving a `with`) takes them off."""

    def __init__(self, transformer: torch.nn.Module, layers: dict[str, torch.nn.Module], name: str,
                 schedule: TLoraSchedule):
        ranks = {layer.r[name] for layer in layers.values()}
        if ranks != {schedule.max_rank}:
            raise ValueError(f"T-LoRA's mask is shared, so every layer needs rank {schedule.max_rank}; got {ranks}")
        self.schedule, self.mask = schedule, None
        self.handles = [transformer.register_forward_pre_hook(self._read_sigma, with_kwargs=True)]
        self.handles += [layer.lora_A[name].register_forward_hook(self._apply_mask) for layer in layers.values()]

    def _read_sigma(self, module, args, kwargs):
        self.mask = self.schedule.mask(_timestep(args, kwargs))  # (B, R)

    def _apply_mask(self, module, args, out: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("T-LoRA layer called outside a DiT forward: no sigma to mask by")
        if out.shape[0] != self.mask.shape[0]:
            raise RuntimeError(f"T-LoRA: activation batch {out.shape[0]} != timestep batch {self.mask.shape[0]}")
        shape = (out.shape[0],) + (1,) * (out.ndim - 2) + (out.shape[-1],)
        return out * self.mask.to(out.device, out.dtype).reshape(shape)  # (B, ..., R)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.mask = [], None

    def __enter__(self) -> TLora:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def orthogonal_init(layers: dict[str, torch.nn.Module], name: str, generator: torch.Generator) -> None:
    """T-LoRA's second ingredient: each down matrix starts with orthonormal rows (QR of a seeded Gaussian), so
    the rank components start independent; scaled to the row norm of peft's default init, 1/sqrt(3)."""
    for layer in layers.values():
        a = layer.lora_A[name].weight  # (R, in)
        q, _ = torch.linalg.qr(torch.randn(a.shape[1], a.shape[0], generator=generator))  # (in, R)
        a.copy_(q.T / math.sqrt(3.0))


def schedule_metadata(schedule: TLoraSchedule) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(asdict(schedule), sort_keys=True)}


def schedule_of(weights: LoraWeights, source: str = "<LoRA>") -> TLoraSchedule:
    """The schedule stored in a T-LoRA file's metadata."""
    raw = weights.metadata.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{source}: no '{METADATA_KEY}' metadata; this is a plain LoRA, not a T-LoRA")
    return TLoraSchedule(**json.loads(raw))
