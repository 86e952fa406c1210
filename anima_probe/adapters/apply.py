"""Put a LoRA on the frozen DiT and take it off again: does the base model come back bit for bit?

peft does the layers: `add_adapter` (diffusers' PeftAdapterMixin on `CosmosTransformer3DModel`) wraps each target
Linear in a peft `LoraLayer` that keeps the original Linear, and its Parameter objects, as `base_layer`; the update
is computed beside it and never written into the weight. Removing deletes the adapter and, when none is left,
unwraps every layer (diffusers' `unload_lora`), so the module tree and every base tensor are the originals.
`merge=True` is the one path that writes into the weights (faster sampling), for one LoRA on a bare model; it keeps
a copy of each weight it touches and removal copies those back, because peft's own unmerge subtracts the update
again and is exact only up to rounding (so no other adapter may be added while one is merged).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from anima_probe.adapters.lora import LoraWeights
from anima_probe.adapters.names import LoraKeyError, linear_modules

_MERGED = "_anima_probe_merged"  # transformer attribute: adapter name -> {module: original weight copy}


def _peft():
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer
    except ImportError as err:  # a dependency in pyproject.toml; say so rather than fail deep inside diffusers
        raise ImportError("LoRA support needs peft: pip install 'peft>=0.17'") from err
    return LoraConfig, LoraLayer


def lora_config(ranks: dict[str, int], alphas: dict[str, float]):
    """A peft LoraConfig for exactly these modules (diffusers names): the commonest rank / alpha, patterns for
    the rest. Patterns are escaped, because peft matches them as regular expressions against module paths."""
    LoraConfig, _ = _peft()
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    a = max(set(alphas.values()), key=list(alphas.values()).count)
    return LoraConfig(r=r, lora_alpha=a, target_modules=sorted(ranks), init_lora_weights=True,
                      rank_pattern={re.escape(k): v for k, v in ranks.items() if v != r},
                      alpha_pattern={re.escape(k): v for k, v in alphas.items() if v != a})


def adapter_names(transformer) -> list[str]:
    return list(getattr(transformer, "peft_config", {}) or {})


def inject(anima, ranks: dict[str, int], alphas: dict[str, float], name: str) -> dict[str, torch.nn.Module]:
    """Add an adapter `name` on the modules (published names) with the given ranks; returns the peft layers by
    published name. Its weights are peft's initialisation (B = 0: a no-op until trained or loaded)."""
    names = linear_modules(anima.dit_config)
    unknown = sorted(set(ranks) - set(names))
    if unknown:
        raise LoraKeyError(f"modules {unknown[:3]} are no Linear of this DiT")
    transformer = anima.transformer
    if name in adapter_names(transformer):
        raise ValueError(f"an adapter named {name!r} is already applied; remove it first or pick another name")
    if getattr(transformer, _MERGED, None):
        # peft would unmerge it (a subtraction) to add another adapter: the exact restore would be lost
        raise ValueError(f"LoRA {list(getattr(transformer, _MERGED))} is merged into the weights; remove it first")
    config = lora_config({names[m]: r for m, r in ranks.items()}, {names[m]: alphas[m] for m in ranks})
    transformer.add_adapter(config, adapter_name=name)
    transformer.set_adapter(adapter_names(transformer))  # add_adapter activates only the newest one
    return {m: transformer.get_submodule(names[m]) for m in ranks}


@torch.no_grad()
def apply_lora(anima, weights: LoraWeights, name: str = "lora", strength: float = 1.0,
               merge: bool = False) -> dict[str, torch.nn.Module]:
    """Apply `weights` to the DiT as adapter `name` at `strength`; returns its peft layers by published name."""
    if merge and adapter_names(anima.transformer):
        raise ValueError(f"merge=True needs a bare model; adapters {adapter_names(anima.transformer)} are applied")
    layers = inject(anima, {m: weights.rank(m) for m in weights.down}, weights.alpha, name)
    for m, layer in layers.items():
        layer.lora_A[name].weight.copy_(weights.down[m])
        layer.lora_B[name].weight.copy_(weights.up[m])
        layer.set_scale(name, strength)
    if merge:
        if getattr(anima.transformer, _MERGED, None) is None:
            setattr(anima.transformer, _MERGED, {})
        getattr(anima.transformer, _MERGED)[name] = {m: layer.get_base_layer().weight.detach().clone()
                                                     for m, layer in layers.items()}
        for layer in layers.values():
            layer.merge(adapter_names=[name])
    return layers


@torch.no_grad()
def remove_lora(anima, name: str = "lora") -> None:
    """Take adapter `name` off; with no adapter left the module tree is the original one again."""
    transformer = anima.transformer
    if name not in adapter_names(transformer):
        raise ValueError(f"no adapter named {name!r} is applied (applied: {adapter_names(transformer)})")
    originals = getattr(transformer, _MERGED, {}).pop(name, {})
    names = linear_modules(anima.dit_config)
    for m, weight in originals.items():
        layer = transformer.get_submodule(names[m])
        layer.merged_adapters.remove(name)
        layer.get_base_layer().weight.copy_(weight)  # exact restore, not peft's subtraction
    transformer.delete_adapters(name)
    if adapter_names(transformer):
        transformer.set_adapter(adapter_names(transformer))
    else:
        transformer.unload_lora()


@contextmanager
def lora_applied(anima, weights: LoraWeights, name: str = "lora", strength: float = 1.0,
                 merge: bool = False) -> Iterator[dict[str, torch.nn.Module]]:
    """`with lora_applied(anima, w): ...` samples with the LoRA; it is removed on exit, even after an error."""
    layers = apply_lora(anima, weights, name, strength, merge)
    try:
        yield layers
    finally:
        remove_lora(anima, name)
