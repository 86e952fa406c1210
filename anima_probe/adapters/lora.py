"""What is in a LoRA file an Anima user has, and does it fit this DiT? The three formats, read and written
(docs/anima.md, "LoRA files").

| format | key of one module (`blocks.0.self_attn.q_proj`) | alpha |
|---|---|---|
| `kohya` (kohya sd-scripts, sorryhyun's anima_lora; ComfyUI reads it) | `lora_unet_blocks_0_self_attn_q_proj.lora_down.weight` / `.lora_up.weight` | `.alpha` scalar; missing = rank |
| `comfyui` (diffusion-pipe's LoRA files; ComfyUI reads it) | `diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight` / `.lora_B.weight` | `.alpha` if present; missing = rank |
| `peft` (diffusers / peft) | `transformer.transformer_blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight` | `lora_adapter_metadata` (`transformer.lora_alpha`, `transformer.alpha_pattern`); missing = rank |

Every format means the same update, `W x + (alpha / rank) * up @ down @ x`, with down (rank, in) and up (out, rank);
"missing alpha = rank" (scale 1) is what kohya's loader, ComfyUI and diffusers each do. In memory a LoRA is keyed by
the published module names. Reading is strict: a key that names no Linear of this DiT, a shape that does not fit, or a
module with only one half of its pair is one line naming the file, the key and the closest module names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anima_probe.adapters.names import (
    KOHYA_PREFIX,
    LoraKeyError,
    closest,
    kohya_modules,
    kohya_name,
    linear_modules,
    linear_shapes,
)
from anima_probe.model.dit_file import DiTConfig
from anima_probe.model.files import load_tensors, read_metadata, save_tensors

FORMATS = ("kohya", "comfyui", "peft")
PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the peft config in a safetensors header
_PATTERNS = {
    "kohya": re.compile(r"^lora_unet_(?P<m>.+)\.(?P<role>lora_down\.weight|lora_up\.weight|alpha)$"),
    "comfyui": re.compile(r"^diffusion_model\.(?P<m>.+)\.(?P<role>lora_A\.weight|lora_B\.weight|alpha)$"),
    "peft": re.compile(r"^transformer\.(?P<m>.+)\.(?P<role>lora_A\.weight|lora_B\.weight)$"),
}
_ROLE = {"lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up", "lora_B.weight": "up",
         "alpha": "alpha"}


@dataclass
class LoraWeights:
    """A LoRA on the DiT: per published module name, down (r, in), up (out, r) and alpha."""

    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    alpha: dict[str, float]
    metadata: dict[str, str] = field(default_factory=dict)  # free-form, kept through save / load

    def rank(self, module: str) -> int:
        return self.down[module].shape[0]

    def scale(self, module: str) -> float:
        return self.alpha[module] / self.rank(module)

    def delta(self, module: str) -> torch.Tensor:
        """The weight update this LoRA adds to `module` at strength 1: (out, in)."""
        return self.scale(module) * (self.up[module].float() @ self.down[module].float())


def detect_format(keys, source: str = "<state dict>") -> str:
    found = {fmt for k in keys for fmt, p in _PATTERNS.items() if p.match(k)}
    if len(found) != 1:
        sample = next(iter(keys), "(no keys)")
        what = f"mixes formats {sorted(found)}" if found else f"is no LoRA format we know (first key {sample!r})"
        raise LoraKeyError(f"{source}: {what}; expected one of {FORMATS} (see anima_probe/adapters/lora.py)")
    return found.pop()


def _module_of(fmt: str, key: str, flat: str, c: DiTConfig, source: str) -> str:
    """The published module name a key's module part means, or one error line naming the closest ones."""
    if fmt == "kohya":
        table = kohya_modules(c)
        name = table.get(flat)
        shown = [KOHYA_PREFIX + k for k in table]
    elif fmt == "peft":
        table = {new: old for old, new in linear_modules(c).items()}
        name, shown = table.get(flat), ["transformer." + k for k in table]
    else:
        table = linear_modules(c)
        name, shown = (flat if flat in table else None), ["diffusion_model." + k for k in table]
    if name is None:
        raise LoraKeyError(f"{source}: LoRA key {key!r} names no Linear of this DiT ({fmt} format); closest: "
                           f"{closest(key.rsplit('.lora', 1)[0].removesuffix('.alpha'), shown)}")
    return name


def _peft_alphas(metadata: dict[str, str], c: DiTConfig) -> tuple[float | None, dict[str, float]]:
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return None, {}
    meta = json.loads(raw)
    to_old = {new: old for old, new in linear_modules(c).items()}
    pattern = {to_old.get(k, k): float(v) for k, v in (meta.get("transformer.alpha_pattern") or {}).items()}
    alpha = meta.get("transformer.lora_alpha")
    return (float(alpha) if alpha is not None else None), pattern


def parse_lora(state: dict[str, torch.Tensor], c: DiTConfig, metadata: dict[str, str] | None = None,
               source: str = "<state dict>") -> LoraWeights:
    """A LoRA state dict in any of FORMATS, checked against DiT `c`."""
    metadata = dict(metadata or {})
    fmt = detect_format(state.keys(), source)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PATTERNS[fmt].match(key)
        if match is None:
            raise LoraKeyError(f"{source}: key {key!r} is not a {fmt} LoRA key (the file's other keys are {fmt})")
        module = _module_of(fmt, key, match["m"], c, source)
        parts.setdefault(module, {})[_ROLE[match["role"]]] = value
    default_alpha, alpha_pattern = _peft_alphas(metadata, c) if fmt == "peft" else (None, {})
    weights = LoraWeights({}, {}, {}, metadata)
    for module, p in parts.items():
        _check_pair(module, p, linear_shapes(c)[module], fmt, source)
        weights.down[module], weights.up[module] = p["down"], p["up"]
        rank = p["down"].shape[0]
        alpha = p["alpha"].item() if "alpha" in p else alpha_pattern.get(module, default_alpha)
        weights.alpha[module] = float(rank if alpha is None else alpha)
    return weights


def _check_pair(module: str, p: dict, shape: tuple[int, int], fmt: str, source: str) -> None:
    out_f, in_f = shape
    for role in ("down", "up"):
        if role not in p:
            raise LoraKeyError(f"{source}: {module} has no {role} weight ({fmt} format); a LoRA module needs both")
    down, up = p["down"], p["up"]
    rank = down.shape[0]
    if down.ndim != 2 or down.shape[1] != in_f:
        raise LoraKeyError(f"{source}: {module} down weight has shape {tuple(down.shape)}; this DiT's Linear takes "
                           f"{in_f} inputs, so it must be (rank, {in_f})")
    if up.ndim != 2 or tuple(up.shape) != (out_f, rank):
        raise LoraKeyError(f"{source}: {module} up weight has shape {tuple(up.shape)}; expected ({out_f}, {rank}) "
                           f"for {out_f} outputs and the down weight's rank {rank}")
    if "alpha" in p and p["alpha"].numel() != 1:
        raise LoraKeyError(f"{source}: {module} alpha has shape {tuple(p['alpha'].shape)}; expected a scalar")


def read_lora(path: str | Path, c: DiTConfig) -> LoraWeights:
    """A LoRA safetensors file in any of FORMATS (detected from its keys), checked against DiT `c`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoRA file")
    return parse_lora(load_tensors(path), c, read_metadata(path), source=str(path))


def to_state_dict(weights: LoraWeights, fmt: str, c: DiTConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of `weights` in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    names = linear_modules(c)
    tensors, metadata = {}, dict(weights.metadata)
    for m in sorted(weights.down):
        down, up, alpha = weights.down[m], weights.up[m], torch.tensor(float(weights.alpha[m]))
        if fmt == "kohya":
            tensors |= {f"{kohya_name(m)}.lora_down.weight": down, f"{kohya_name(m)}.lora_up.weight": up,
                        f"{kohya_name(m)}.alpha": alpha}
        elif fmt == "comfyui":
            tensors |= {f"diffusion_model.{m}.lora_A.weight": down, f"diffusion_model.{m}.lora_B.weight": up}
            if weights.alpha[m] != weights.rank(m):  # diffusion-pipe writes none (alpha = rank)
                tensors[f"diffusion_model.{m}.alpha"] = alpha
        else:
            tensors |= {f"transformer.{names[m]}.lora_A.weight": down, f"transformer.{names[m]}.lora_B.weight": up}
    if fmt == "peft":
        metadata[PEFT_METADATA_KEY] = json.dumps(_peft_config(weights, names), sort_keys=True)
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata


def _peft_config(weights: LoraWeights, names: dict[str, str]) -> dict:
    """The peft LoraConfig fields diffusers stores beside the tensors (one rank/alpha, patterns for the rest)."""
    ranks = {names[m]: weights.rank(m) for m in weights.down}
    alphas = {names[m]: weights.alpha[m] for m in weights.down}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    a = max(set(alphas.values()), key=list(alphas.values()).count)
    return {"transformer.r": r, "transformer.lora_alpha": a, "transformer.target_modules": sorted(ranks),
            "transformer.rank_pattern": {k: v for k, v in ranks.items() if v != r},
            "transformer.alpha_pattern": {k: v for k, v in alphas.items() if v != a}}


def save_lora(weights: LoraWeights, path: str | Path, fmt: str, c: DiTConfig) -> Path:
    """Write `weights` as a safetensors file in format `fmt`, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, metadata = to_state_dict(weights, fmt, c)
    return save_tensors(tensors, path, metadata)
