"""HydraLoRA: one shared down-projection, several up-heads and a router per layer; what does routing add?

HydraLoRA (Tian et al., NeurIPS 2024, arXiv 2404.19245) in the layer-local form of sorryhyun's Anima variant
(docs/modulation-guidance.md, "LoRA variants as anima_probe builds them"): each adapted Linear has one down matrix
A (R, in), E up-heads B_e (out, R) and a router that reads the rank-R post-A activation h, RMS-pooled over the
sequence, and softmaxes over the heads:

    g = softmax(W_r rms_seq(h) + b_r)   (B, E);    update = scale * sum_e g_e B_e h.

peft has no routed up-projection, so `HydraUp` takes the place of peft's `lora_B` inside an otherwise ordinary peft
LoRA layer (the router's input, h, is exactly lora_B's input); everything else (injection, scaling, removal) is
peft's. Heads start at zero (a no-op, as a LoRA's B does); the router starts small and random, because with equal
heads and a uniform router every head would get the same gradient forever.

Files (our format; sorryhyun's docs name the two files but not their keys):
- `NAME.safetensors`: the baked plain LoRA in kohya keys, up = sum_e g_mean_e B_e with g_mean the layer's average
  gate over the training batches; it loads anywhere a LoRA loads (ComfyUI), without routing.
- `NAME_moe.safetensors`: per module (kohya name) `.lora_up.{e}.weight` (out, R), `.router.weight` (E, R),
  `.router.bias` (E,); metadata `hydra` = {"heads": E}. Both files together give live routing (`read_hydra`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from anima_probe.adapters.apply import inject
from anima_probe.adapters.lora import LoraWeights, read_lora, save_lora
from anima_probe.adapters.names import LoraKeyError, kohya_modules, kohya_name
from anima_probe.model.dit_file import DiTConfig
from anima_probe.model.files import load_tensors, read_metadata, save_tensors

METADATA_KEY = "hydra"
_MOE_KEY = re.compile(r"^lora_unet_(?P<m>.+)\.(?P<part>lora_up\.(?P<e>\d+)\.weight|router\.weight|router\.bias)$")


class HydraUp(torch.nn.Module):
    """E up-heads mixed per sample by a router on the RMS-pooled rank-R activation; stands in for peft's lora_B."""

    def __init__(self, rank: int, out_features: int, heads: int, generator: torch.Generator | None = None):
        super().__init__()
        self.heads = torch.nn.Parameter(torch.zeros(heads, out_features, rank))  # (E, out, R)
        self.router = torch.nn.Linear(rank, heads)
        with torch.no_grad():
            self.router.weight.copy_(0.02 * torch.randn(heads, rank, generator=generator))
            self.router.bias.zero_()
        self.register_buffer("gate_sum", torch.zeros(heads))  # training batches' gates, for the baked LoRA
        self.register_buffer("gate_count", torch.zeros(()))

    def gates(self, h: torch.Tensor) -> torch.Tensor:
        """Router weights (B, E), each row summing to 1."""
        flat = h.reshape(h.shape[0], -1, h.shape[-1])  # (B, S, R)
        pooled = flat.float().pow(2).mean(dim=1).sqrt()  # (B, R) RMS over the sequence
        return torch.softmax(self.router(pooled.to(self.router.weight.dtype)), dim=-1)  # (B, E)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = self.gates(h)  # (B, E)
        if self.training:
            self.gate_sum += g.detach().sum(0)
            self.gate_count += g.shape[0]
        up = torch.einsum("be,eor->bor", g, self.heads)  # (B, out, R) each sample's mixed up-matrix
        flat = h.reshape(h.shape[0], -1, h.shape[-1])  # (B, S, R)
        return torch.einsum("bsr,bor->bso", flat, up).reshape(*h.shape[:-1], up.shape[1])  # (B, ..., out)

    def mean_gate(self) -> torch.Tensor:
        """Average gate over the training batches seen; uniform if none was seen."""
        E = self.heads.shape[0]
        return self.gate_sum / self.gate_count if self.gate_count > 0 else torch.full((E,), 1.0 / E)


@dataclass
class HydraWeights:
    """A HydraLoRA: the shared downs and alphas (in `lora`, whose up is the baked one), heads and routers."""

    lora: LoraWeights
    heads: dict[str, torch.Tensor]  # (E, out, R)
    router_weight: dict[str, torch.Tensor]  # (E, R)
    router_bias: dict[str, torch.Tensor]  # (E,)


def inject_hydra(anima, ranks: dict[str, int], alphas: dict[str, float], name: str, heads: int,
                 generator: torch.Generator | None = None) -> dict[str, torch.nn.Module]:
    """A peft LoRA adapter whose lora_B in every layer is a fresh HydraUp with `heads` heads."""
    layers = inject(anima, ranks, alphas, name)
    for layer in layers.values():
        base = layer.get_base_layer()
        up = HydraUp(layer.r[name], base.out_features, heads, generator)
        layer.lora_B[name] = up.to(base.weight.device, base.weight.dtype)
    return layers


@torch.no_grad()
def apply_hydra(anima, weights: HydraWeights, name: str = "hydra") -> dict[str, torch.nn.Module]:
    lw = weights.lora
    E = {h.shape[0] for h in weights.heads.values()}.pop()
    layers = inject_hydra(anima, {m: lw.rank(m) for m in lw.down}, lw.alpha, name, E)
    for m, layer in layers.items():
        layer.lora_A[name].weight.copy_(lw.down[m])
        up = layer.lora_B[name]
        up.heads.copy_(weights.heads[m])
        up.router.weight.copy_(weights.router_weight[m])
        up.router.bias.copy_(weights.router_bias[m])
    return layers


def hydra_weights(layers: dict[str, torch.nn.Module], name: str) -> HydraWeights:
    """The adapter's current tensors; the plain part's up is the bake by each layer's mean gate."""
    lw, heads, rw, rb = LoraWeights({}, {}, {}, {METADATA_KEY: "baked"}), {}, {}, {}
    for m, layer in layers.items():
        up = layer.lora_B[name]
        lw.down[m] = layer.lora_A[name].weight.detach().clone()
        lw.up[m] = torch.einsum("e,eor->or", up.mean_gate().to(up.heads.dtype), up.heads.detach())  # (out, R)
        lw.alpha[m] = float(layer.lora_alpha[name])
        heads[m], rw[m], rb[m] = (up.heads.detach().clone(), up.router.weight.detach().clone(),
                                  up.router.bias.detach().clone())
    return HydraWeights(lw, heads, rw, rb)


def moe_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_moe" + path.suffix)


def save_hydra(weights: HydraWeights, path: str | Path, c: DiTConfig) -> tuple[Path, Path]:
    """The baked plain LoRA at `path` (kohya keys) and the heads + routers beside it (`*_moe.safetensors`)."""
    plain = save_lora(weights.lora, path, "kohya", c)
    tensors = {}
    for m, h in weights.heads.items():
        k = kohya_name(m)
        tensors |= {f"{k}.lora_up.{e}.weight": h[e].contiguous() for e in range(h.shape[0])}
        tensors |= {f"{k}.router.weight": weights.router_weight[m], f"{k}.router.bias": weights.router_bias[m]}
    E = {h.shape[0] for h in weights.heads.values()}.pop()
    return plain, save_tensors(tensors, moe_path(path), {METADATA_KEY: json.dumps({"heads": E})})


def read_hydra(path: str | Path, c: DiTConfig) -> HydraWeights:
    """A HydraLoRA from its baked plain file and the `_moe` file beside it, checked against each other and `c`."""
    lw = read_lora(path, c)
    moe = moe_path(path)
    if not moe.is_file():
        raise FileNotFoundError(f"{moe}: no _moe file beside {path}; without it this is a plain (baked) LoRA")
    table, parts = kohya_modules(c), {}
    E = int(json.loads(read_metadata(moe).get(METADATA_KEY, "{}")).get("heads", 0))
    for key, tensor in load_tensors(moe).items():
        match = _MOE_KEY.match(key)
        module = table.get(match["m"]) if match else None
        if module is None or module not in lw.down:
            raise LoraKeyError(f"{moe}: key {key!r} names no module of the plain LoRA {path}")
        parts.setdefault(module, {})[match["part"]] = tensor
    if E < 1 or set(parts) != set(lw.down):
        raise LoraKeyError(f"{moe}: needs metadata heads >= 1 and every module of {path}; got heads={E}, "
                           f"{len(parts)} of {len(lw.down)} modules")
    need = {f"lora_up.{e}.weight" for e in range(E)} | {"router.weight", "router.bias"}
    for m, p in parts.items():
        if set(p) != need:
            raise LoraKeyError(f"{moe}: {kohya_name(m)} has {sorted(p)}; expected {sorted(need)} for {E} heads")
    heads = {m: torch.stack([p[f"lora_up.{e}.weight"] for e in range(E)]) for m, p in parts.items()}
    for m, h in heads.items():
        if tuple(h.shape[1:]) != tuple(lw.up[m].shape):
            raise LoraKeyError(f"{moe}: {kohya_name(m)} heads have shape {tuple(h.shape[1:])}, the plain up "
                               f"{tuple(lw.up[m].shape)}")
    return HydraWeights(lw, heads, {m: p["router.weight"] for m, p in parts.items()},
                        {m: p["router.bias"] for m, p in parts.items()})
