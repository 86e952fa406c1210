"""Which adapter is this file, and how does it go on the DiT? One entry point for plain LoRA, T-LoRA and HydraLoRA.

A file with a `*_moe.safetensors` beside it is a HydraLoRA (live routing); one with `tlora` metadata is a T-LoRA
(rank mask hooks); anything else is a plain LoRA in one of `lora.FORMATS`. `adapter_applied` puts it on for the
length of a `with` block and always takes it off, so the base weights come back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anima_probe.adapters import hydra, tlora
from anima_probe.adapters.apply import apply_lora, remove_lora
from anima_probe.adapters.lora import read_lora


def adapter_kind(path: str | Path, c) -> str:
    """'hydra', 'tlora' or 'lora'."""
    if hydra.moe_path(path).is_file():
        return "hydra"
    return "tlora" if tlora.METADATA_KEY in read_lora(path, c).metadata else "lora"


@contextmanager
def adapter_applied(anima, path: str | Path, name: str = "adapter", strength: float = 1.0,
                    live: bool = True) -> Iterator[str]:
    """Apply the adapter in `path` as `name`; yields its kind. live=False applies a T-LoRA without its mask and a
    HydraLoRA as its baked plain file: what a loader that ignores the extras (ComfyUI) does."""
    kind = adapter_kind(path, anima.dit_config)
    hooks = None
    if kind == "hydra" and live:
        if strength != 1.0:
            raise ValueError("a live HydraLoRA is applied at strength 1 (its routers are not scaled)")
        hydra.apply_hydra(anima, hydra.read_hydra(path, anima.dit_config), name)
    else:
        weights = read_lora(path, anima.dit_config)
        layers = apply_lora(anima, weights, name, strength)
        if kind == "tlora" and live:
            hooks = tlora.TLora(anima.transformer, layers, name, tlora.schedule_of(weights, str(path)))
    try:
        yield kind
    finally:
        if hooks is not None:
            hooks.remove()
        remove_lora(anima, name)
