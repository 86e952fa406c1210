"""Tiny twins: a complete Anima model folder in the real file formats and layout, small enough for CI.

The DiT file carries the published key names (`blocks.N.self_attn.q_proj.weight`, `llm_adapter.*`, ...) under the
chosen prefix; the text encoder is a transformers Qwen3 file with `model.`-prefixed HF names; the VAE uses the Wan
single-file names; the tokenizer folders are trained offline. Everything loads through `load_anima(--model DIR)`,
exactly as the real files do. The same writer saves the trained toy world (`save_model_folder`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKLQwenImage, CosmosTransformer3DModel
from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers
from transformers import Qwen3Config, Qwen3Model

from anima_probe.errors import InputError
from anima_probe.model.anima import QWEN_ROPE_THETA
from anima_probe.model.dit_file import ADAPTER_PREFIX, AdapterConfig, DiTConfig, adapter_layout, dit_layout
from anima_probe.model.files import save_tensors
from anima_probe.pipeline.atomic import atomic_write_text

PREFIX_CHOICES = {"net.": "net.", "model.diffusion_model.": "model.diffusion_model.", "none": ""}
DIT_FILE = "diffusion_models/anima-tiny.safetensors"
TEXT_ENCODER_FILE = "text_encoders/qwen_3_06b_tiny.safetensors"
VAE_FILE = "vae/qwen_image_vae_tiny.safetensors"

TINY_DIT = DiTConfig(hidden=64, num_blocks=2, head_dim=32, mlp_hidden=256, text_dim=32, adaln_lora_dim=16,
                     in_channels=16, out_channels=16, patch=2)
TINY_QWEN = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 12}
# AutoencoderKLQwenImage kwargs: the published VAE's structure (4 levels, temporal down in the last two) at width 8.
TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True]}


def random_tensors(layout: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded weights at sensible scales: norms near 1, biases near 0, matrices ~ N(0, 1/fan_in)."""
    out = {}
    for key, shape in layout.items():
        z = torch.randn(shape, generator=generator)
        if key.endswith("bias"):
            out[key] = 0.02 * z
        elif len(shape) == 1:  # RMSNorm gains
            out[key] = 1.0 + 0.1 * z
        elif key.endswith("embed.weight"):
            out[key] = z
        else:
            out[key] = z / shape[1] ** 0.5
    return out


def diffusers_to_original_keys(c: DiTConfig) -> dict[str, str]:
    """diffusers transformer key -> published key, derived by running diffusers' own converter on the layout."""
    layout = dit_layout(c)
    converted = convert_cosmos_transformer_checkpoint_to_diffusers({k: k for k in layout})
    return {new: old for new, old in converted.items()}


def dit_file_state(transformer: CosmosTransformer3DModel, adapter: torch.nn.Module, c: DiTConfig) -> dict:
    """A trained diffusers transformer + adapter as the published single file's (bare) state dict."""
    names = diffusers_to_original_keys(c)
    state = {names[k]: v for k, v in transformer.state_dict().items()}
    state.update({ADAPTER_PREFIX + k: v for k, v in adapter.state_dict().items()})
    return state


def write_dit_file(path: Path, state: dict[str, torch.Tensor], prefix: str, metadata: dict | None = None) -> Path:
    return save_tensors({prefix + k: v for k, v in sorted(state.items())}, path, metadata or {})


def tiny_qwen3(vocab: int, seed: int, dims: dict = TINY_QWEN) -> Qwen3Model:
    """A randomly initialised (seeded) Qwen3 with Anima's encoder conventions; frozen by the caller."""
    config = Qwen3Config(vocab_size=vocab, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": QWEN_ROPE_THETA}, **dims)
    torch.manual_seed(seed)  # transformers' initialiser reads the global generator
    return Qwen3Model(config).eval()


def write_qwen3_file(path: Path, model: Qwen3Model) -> Path:
    return save_tensors({"model." + k: v for k, v in sorted(model.state_dict().items())}, path)


def tiny_vae_state_dict(seed: int = 0, dims: dict = TINY_VAE) -> dict[str, torch.Tensor]:
    """Seeded random fp32 VAE weights in diffusers naming, independent of torch's default init functions."""
    with torch.device("meta"):
        model = AutoencoderKLQwenImage(**dims)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in sorted(model.state_dict().items()):
        noise = torch.randn(meta.shape, generator=gen, dtype=torch.float32)
        if name.endswith(".gamma"):
            state[name] = 1.0 + 0.1 * noise  # RMS-norm gains near 1, but distinct so swaps are visible
        elif name.endswith(".bias"):
            state[name] = 0.01 * noise
        else:  # fan-in scaling keeps activations O(1) through the random network
            state[name] = noise / max(1, meta[0].numel()) ** 0.5
    return state


def write_tiny_vae(path: str | Path, seed: int = 0, dims: dict = TINY_VAE) -> Path:
    """A tiny random Qwen-Image VAE in the published file's Wan2.1 key naming; byte-identical per seed."""
    from anima_probe.model.vae import diffusers_to_wan_key

    state = tiny_vae_state_dict(seed, dims)
    wan = {diffusers_to_wan_key(k, dims["num_res_blocks"]): v for k, v in state.items()}
    # One metadata entry only: safetensors stores metadata as a hash map, so several entries could reorder.
    return save_tensors(wan, path, {"format": "pt"})


def write_tiny(out_dir: Path, prefix: str = "net.", seed: int = 0, with_vae: bool = True,
               corpus: list[str] | None = None) -> Path:
    """Write a complete deterministic tiny model folder; returns it. `prefix` is a key of PREFIX_CHOICES."""
    from anima_probe.model.tokenization import load_tokenizers, train_tiny_tokenizers

    if prefix not in PREFIX_CHOICES:
        raise InputError(f"prefix must be one of {list(PREFIX_CHOICES)}, got {prefix!r}")
    out = Path(out_dir)
    qdir, tdir = train_tiny_tokenizers(out, corpus or [], seed=seed)
    qtok, ttok = load_tokenizers(qdir, tdir)
    qwen = tiny_qwen3(len(qtok), seed)
    write_qwen3_file(out / TEXT_ENCODER_FILE, qwen)
    ad = AdapterConfig(source_dim=TINY_QWEN["hidden_size"], model_dim=TINY_DIT.text_dim, num_layers=2, head_dim=16,
                       mlp_hidden=4 * TINY_DIT.text_dim, vocab=len(ttok))
    g = torch.Generator().manual_seed(seed)
    state = random_tensors(dit_layout(TINY_DIT), g)
    state.update({ADAPTER_PREFIX + k: v for k, v in random_tensors(adapter_layout(ad), g).items()})
    write_dit_file(out / DIT_FILE, state, PREFIX_CHOICES[prefix], {"format": "anima-tiny", "seed": seed})
    if with_vae:
        write_tiny_vae(out / VAE_FILE, seed=seed)
    atomic_write_text(out / "tiny.json", json.dumps({"seed": seed, "prefix": prefix, "dit": asdict(TINY_DIT),
                                                     "adapter": asdict(ad), "qwen3": TINY_QWEN}, indent=2) + "\n")
    return out


LAYOUTS = ("single-file", "diffusers", "comfyui")


def write_tiny_layout(out_dir: Path, layout: str = "single-file", prefix: str = "net.", seed: int = 0) -> Path:
    """A tiny twin in one of the layouts the real weights are published in: the single files (`prefix` chooses
    the DiT file's key prefix), the diffusers folder (transformer/, text_conditioner/, text_encoder/, vae/,
    tokenizer/, t5_tokenizer/) or a ComfyUI install (models/{diffusion_models,text_encoders,vae}/ and the tokenizers
    under comfy/text_encoders/). The same weights in every layout, so each must load to the same model."""
    from anima_probe.model.anima import load_anima
    from anima_probe.model.tokenization import QWEN_DIR_NAME, T5_DIR_NAME

    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out_dir)
    if layout == "single-file":
        return write_tiny(out, prefix=prefix, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_tiny(Path(tmp) / "twin", prefix=prefix, seed=seed)
        if layout == "comfyui":
            for sub in ("diffusion_models", "text_encoders", "vae"):
                shutil.copytree(src / sub, out / "models" / sub)
            for tok in (QWEN_DIR_NAME, T5_DIR_NAME):
                shutil.copytree(src / tok, out / "comfy" / "text_encoders" / tok)
            return out
        anima = load_anima(src)
        # the Diffusers repo declares the 16 latent channels and lets the model add the padding-mask channel
        anima.transformer.register_to_config(in_channels=TINY_DIT.in_channels, concat_padding_mask=True)
        anima.transformer.save_pretrained(out / "transformer")
        anima.adapter.save_pretrained(out / "text_conditioner")
        anima.text_encoder.save_pretrained(out / "text_encoder")
        anima.vae.save_pretrained(out / "vae")
        shutil.copytree(src / QWEN_DIR_NAME, out / "tokenizer")
        shutil.copytree(src / T5_DIR_NAME, out / T5_DIR_NAME)
    return out
