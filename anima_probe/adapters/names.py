"""Which module does a LoRA key mean? The DiT's Linear layers under the three names LoRA files use.

LoRA files name modules as the published MiniTrainDIT does (`blocks.0.self_attn.q_proj`; kohya flattens the dots:
`lora_unet_blocks_0_self_attn_q_proj`), or as diffusers' `CosmosTransformer3DModel` does
(`transformer_blocks.0.attn1.to_q`), which is what we hold in memory. The table between the two is derived from
diffusers' own checkpoint converter run on the layout (the same one the loader uses), so it cannot drift from it.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

from anima_probe.errors import InputError
from anima_probe.model.dit_file import DiTConfig, dit_layout
from anima_probe.model.tiny import diffusers_to_original_keys

KOHYA_PREFIX = "lora_unet_"
# The ~280 Linears sorryhyun's and kohya's Anima LoRAs adapt by default (10 per block x 28 blocks): attention
# q/k/v/out of both attentions and the two MLP layers. AdaLN heads, embedders and the final layer are left alone.
DEFAULT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
                   "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
                   "mlp.layer1", "mlp.layer2")


class LoraKeyError(InputError):
    """A LoRA file that does not fit this DiT: unknown module, wrong shape, missing half of a pair."""


@lru_cache(maxsize=8)
def _tables(c: DiTConfig) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    layout = dit_layout(c)
    to_original = diffusers_to_original_keys(c)  # diffusers key -> original key
    names, shapes = {}, {}
    for new, old in to_original.items():
        if old.endswith(".weight") and len(layout[old]) == 2:  # every 2-D weight of the DiT is a Linear's
            names[old.removesuffix(".weight")] = new.removesuffix(".weight")
            shapes[old.removesuffix(".weight")] = layout[old]
    return names, shapes


def linear_modules(c: DiTConfig) -> dict[str, str]:
    """Original module name -> diffusers module name, for every Linear of the DiT (the LLM adapter excluded)."""
    return dict(_tables(c)[0])


def linear_shapes(c: DiTConfig) -> dict[str, tuple[int, int]]:
    """Original module name -> (out_features, in_features)."""
    return dict(_tables(c)[1])


def default_targets(c: DiTConfig) -> list[str]:
    """Original names of the Linears adapted by default, block by block."""
    return [f"blocks.{i}.{t}" for i in range(c.num_blocks) for t in DEFAULT_TARGETS]


def kohya_name(module: str) -> str:
    return KOHYA_PREFIX + module.replace(".", "_")


def kohya_modules(c: DiTConfig) -> dict[str, str]:
    """Flattened kohya name (without the prefix) -> original name. Flattening is not reversible by string
    replacement (`self_attn`, `output_proj` hold underscores), so names are looked up, never un-flattened."""
    return {m.replace(".", "_"): m for m in linear_modules(c)}


def closest(name: str, candidates, n: int = 3) -> str:
    """The n candidates nearest to `name`, as one comma-separated string for an error line."""
    found = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.0)
    return ", ".join(found) if found else "(none)"
