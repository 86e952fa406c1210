"""How is an Anima DiT file laid out, and does this file match it?

The published single file holds the MiniTrainDIT tensors plus the LLM adapter (`llm_adapter.*`), under one of the key
prefixes `net.`, `model.diffusion_model.` or none (docs/anima.md, "Checkpoint keys and prefixes"). This module detects
the prefix from the key names, infers every dimension from tensor shapes (so the 28-block release, a 40-block
depth-expanded variant and the tiny twins share one code path) and states the layout those dimensions imply;
`anima_probe.model.files` reads the header, checks the key set strictly against that layout and reads the tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from anima_probe.model.files import SHOWN_KEYS, ModelFileError, count_indexed, required_shape

PREFIXES = ("model.diffusion_model.", "model.model.", "net.", "")
DETECT_KEY = "blocks.0.mlp.layer1.weight"
ADAPTER_PREFIX = "llm_adapter."


@dataclass(frozen=True)
class DiTConfig:
    """Dimensions of a MiniTrainDIT (Anima / Cosmos-Predict2 t2i), all inferred from tensor shapes."""

    hidden: int  # model_channels (2048 for Anima)
    num_blocks: int  # 28 for Anima
    head_dim: int  # 128
    mlp_hidden: int  # 8192
    text_dim: int  # crossattn_emb channels, 1024
    adaln_lora_dim: int  # 256
    in_channels: int  # latent channels without the padding-mask channel (16)
    out_channels: int  # 16
    patch: int  # spatial patch (2)

    @property
    def num_heads(self) -> int:
        return self.hidden // self.head_dim


@dataclass(frozen=True)
class AdapterConfig:
    """Dimensions of the 6-layer LLM adapter that maps Qwen3 states + T5 ids to `crossattn_emb`."""

    source_dim: int  # Qwen3 hidden size (1024)
    model_dim: int  # 1024
    num_layers: int  # 6
    head_dim: int  # 64
    mlp_hidden: int  # 4096
    vocab: int  # T5 vocabulary (32128)
    self_attn: bool = True

    @property
    def num_heads(self) -> int:
        return self.model_dim // self.head_dim


# The released Anima's dimensions (docs/anima.md, "Architecture and dimensions"), for building it with random weights.
ANIMA_DIT = DiTConfig(hidden=2048, num_blocks=28, head_dim=128, mlp_hidden=8192, text_dim=1024, adaln_lora_dim=256,
                      in_channels=16, out_channels=16, patch=2)
ANIMA_ADAPTER = AdapterConfig(source_dim=1024, model_dim=1024, num_layers=6, head_dim=64, mlp_hidden=4096,
                              vocab=32128)


# ----------------------------------------------------------------------------------------------------------------
# Prefix and dimensions


def detect_prefix(keys, path: Path | str = "<state dict>") -> str:
    """The key prefix used by most DiT tensors (ComfyUI picks the most common of its known prefixes too)."""
    counts = {p: sum(1 for k in keys if k.startswith(p) and k[len(p):].startswith(("blocks.", "x_embedder.")))
              for p in PREFIXES}
    best = max(PREFIXES, key=lambda p: (counts[p], len(p)))
    if counts[best] == 0 or f"{best}{DETECT_KEY}" not in keys:
        shown = ", ".join(sorted(keys)[:SHOWN_KEYS])
        raise ModelFileError(
            f"{path}: not an Anima/Cosmos DiT file: no '{DETECT_KEY}' under any of the prefixes "
            f"{[p or '<none>' for p in PREFIXES]} (first keys: {shown})"
        )
    return best


def infer_dit_config(shapes: dict[str, tuple[int, ...]], path="<state dict>") -> DiTConfig:
    """Dimensions from bare-named shapes. Patch and channels follow from two equations:
    x_embedder in = (C + 1)·p², final_layer out = C·p²  =>  p² = difference, C = out / p²."""
    hidden, embed_in = required_shape(shapes, "x_embedder.proj.1.weight", path)
    final_out = required_shape(shapes, "final_layer.linear.weight", path)[0]
    p2 = embed_in - final_out
    p = int(round(p2**0.5))
    if p2 <= 0 or p * p != p2 or final_out % p2:
        raise ModelFileError(
            f"{path}: cannot infer patch size and channels from x_embedder in={embed_in}, final_layer out={final_out}"
        )
    return DiTConfig(
        hidden=hidden,
        # a block is counted by a weight every block has: a stray "blocks.99.foo" is one unexpected key
        num_blocks=count_indexed(shapes, r"blocks\.(\d+)\.mlp\.layer1\.weight$"),
        head_dim=required_shape(shapes, "blocks.0.self_attn.q_norm.weight", path)[0],
        mlp_hidden=required_shape(shapes, "blocks.0.mlp.layer1.weight", path)[0],
        text_dim=required_shape(shapes, "blocks.0.cross_attn.k_proj.weight", path)[1],
        adaln_lora_dim=required_shape(shapes, "blocks.0.adaln_modulation_self_attn.1.weight", path)[0],
        in_channels=final_out // p2,
        out_channels=final_out // p2,
        patch=p,
    )


def infer_adapter_config(shapes: dict[str, tuple[int, ...]], path="<state dict>") -> AdapterConfig:
    """Adapter dimensions from bare (prefix `llm_adapter.` removed) shapes."""
    vocab, model_dim = required_shape(shapes, "embed.weight", path)
    return AdapterConfig(
        source_dim=required_shape(shapes, "blocks.0.cross_attn.k_proj.weight", path)[1],
        model_dim=model_dim,
        num_layers=count_indexed(shapes, r"blocks\.(\d+)\."),
        head_dim=required_shape(shapes, "blocks.0.cross_attn.q_norm.weight", path)[0],
        mlp_hidden=required_shape(shapes, "blocks.0.mlp.0.weight", path)[0],
        vocab=vocab,
        self_attn="blocks.0.self_attn.q_proj.weight" in shapes,
    )


# ----------------------------------------------------------------------------------------------------------------
# The layout a config implies (bare names, as in anima_checkpoint_keys.tsv)


def dit_layout(c: DiTConfig) -> dict[str, tuple[int, ...]]:
    D, r, lo = c.hidden, c.adaln_lora_dim, {}
    lo["x_embedder.proj.1.weight"] = (D, (c.in_channels + 1) * c.patch**2)
    lo["t_embedder.1.linear_1.weight"] = (D, D)
    lo["t_embedder.1.linear_2.weight"] = (3 * D, D)
    lo["t_embedding_norm.weight"] = (D,)
    for i in range(c.num_blocks):
        b = f"blocks.{i}."
        for kind, kv_in in (("self_attn", D), ("cross_attn", c.text_dim)):
            lo[f"{b}{kind}.q_proj.weight"] = (D, D)
            lo[f"{b}{kind}.q_norm.weight"] = (c.head_dim,)
            lo[f"{b}{kind}.k_proj.weight"] = (D, kv_in)
            lo[f"{b}{kind}.k_norm.weight"] = (c.head_dim,)
            lo[f"{b}{kind}.v_proj.weight"] = (D, kv_in)
            lo[f"{b}{kind}.output_proj.weight"] = (D, D)
        lo[f"{b}mlp.layer1.weight"] = (c.mlp_hidden, D)
        lo[f"{b}mlp.layer2.weight"] = (D, c.mlp_hidden)
        for kind in ("self_attn", "cross_attn", "mlp"):
            lo[f"{b}adaln_modulation_{kind}.1.weight"] = (r, D)
            lo[f"{b}adaln_modulation_{kind}.2.weight"] = (3 * D, r)
    lo["final_layer.linear.weight"] = (c.patch**2 * c.out_channels, D)
    lo["final_layer.adaln_modulation.1.weight"] = (r, D)
    lo["final_layer.adaln_modulation.2.weight"] = (2 * D, r)
    return lo


def adapter_layout(c: AdapterConfig) -> dict[str, tuple[int, ...]]:
    M, lo = c.model_dim, {"embed.weight": (c.vocab, c.model_dim)}
    for i in range(c.num_layers):
        b = f"blocks.{i}."
        kinds = (("self_attn", M), ("cross_attn", c.source_dim)) if c.self_attn else (("cross_attn", c.source_dim),)
        for kind, kv_in in kinds:
            lo[f"{b}norm_{kind}.weight"] = (M,)
            lo[f"{b}{kind}.q_proj.weight"] = (M, M)
            lo[f"{b}{kind}.k_proj.weight"] = (M, kv_in)
            lo[f"{b}{kind}.v_proj.weight"] = (M, kv_in)
            lo[f"{b}{kind}.o_proj.weight"] = (M, M)
            lo[f"{b}{kind}.q_norm.weight"] = (c.head_dim,)
            lo[f"{b}{kind}.k_norm.weight"] = (c.head_dim,)
        lo[f"{b}norm_mlp.weight"] = (M,)
        lo[f"{b}mlp.0.weight"] = (c.mlp_hidden, M)
        lo[f"{b}mlp.0.bias"] = (c.mlp_hidden,)
        lo[f"{b}mlp.2.weight"] = (M, c.mlp_hidden)
        lo[f"{b}mlp.2.bias"] = (M,)
    lo["out_proj.weight"] = (M, M)
    lo["out_proj.bias"] = (M,)
    lo["norm.weight"] = (M,)
    return lo


def describe(config) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(config).items())
