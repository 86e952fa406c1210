"""The Qwen-Image VAE: load the published single file strictly, and map pixels <-> normalised latents.

Question this module answers: *which latent does the Anima DiT actually see for an image, and how do we get
back to pixels?* Anima denoises Wan2.1-normalised latents ``(z - mean) / std`` of the Qwen-Image VAE, a
Wan2.1-architecture 3D causal VAE (docs/anima.md, "VAE and latent normalisation"). Images are T=1 videos inside the
VAE; the public functions here hide that and speak (B, 3, H, W) pixels in [-1, 1] and (B, 16, H/8, W/8) latents.

The published ``qwen_image_vae.safetensors`` uses the original Wan2.1 key names (``encoder.downsamples.N``,
``decoder.upsamples.N``, ``middle.K.residual.J``, ``head.2``, top-level ``conv1``/``conv2``). diffusers'
``convert_wan_vae_to_diffusers`` renames them correctly for the published config, but hard-codes the decoder
layout of that config (3 resnets + 1 upsampler per level, the one shortcut at ``upsamples.4``), so it
mis-names keys of a VAE with another num_res_blocks or other decoder shortcuts (e.g. our tiny twins).
``wan_to_diffusers_key`` / ``diffusers_to_wan_key`` derive the same renames from the config instead; a test
checks that they pair every key exactly as diffusers does on the published config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKLQwenImage

from anima_probe.errors import InputError
from anima_probe.model.files import ModelFileError, check_layout, load_tensors, tensor_shapes

# Wan2.1 latent statistics (ComfyUI latent_formats.Wan21; diffusers and diffusion-pipe agree). docs/anima.md holds
# them as a table, which tests/integration/model/test_vae.py compares with these.
LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

WAN_FORMAT = "wan-single-file"
DIFFUSERS_FILE_FORMAT = "diffusers-single-file"
DIFFUSERS_FOLDER_FORMAT = "diffusers-folder"
_SHOW = 5  # offending keys named per category in an error message


# ---------------------------------------------------------------------------------------------------------
# Key naming: Wan2.1 original <-> diffusers AutoencoderKLQwenImage
# ---------------------------------------------------------------------------------------------------------
# Whole-key renames that do not depend on the config (suffix .weight/.bias/.gamma kept as is).
_FIXED = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
# Wan's ResidualBlock is Sequential(norm, silu, conv, norm, silu, dropout, conv); diffusers names the layers.
_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
             "shortcut": "conv_shortcut"}  # fmt: skip
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}


def _swap_prefix(key: str, table: Mapping[str, str]) -> str | None:
    """Rename the longest table entry that is a dotted prefix of ``key``; None when none is."""
    for old in sorted(table, key=len, reverse=True):
        if key.startswith(old + "."):
            return table[old] + key[len(old) :]
    return None


def _residual(rest: str, table: Mapping[str, str]) -> str:
    """Rename a residual block's layer (``residual.2.weight`` <-> ``conv1.weight``); other suffixes pass."""
    return _swap_prefix(rest, table) or rest


def wan_to_diffusers_key(key: str, num_res_blocks: int) -> str:
    """Diffusers name of one Wan2.1 VAE key; unknown keys come back unchanged (strict load reports them)."""
    if (new := _swap_prefix(key, _FIXED)) is not None:
        return new
    if m := re.fullmatch(r"(encoder|decoder)\.middle\.(\d)\.(.+)", key):
        part, idx, rest = m.groups()
        rest = rest if idx == "1" else _residual(rest, _RESIDUAL)  # middle.1 is the attention block
        return f"{part}.mid_block.{_MIDDLE.get(idx, idx)}.{rest}"
    if m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key):
        # The encoder is a flat list in both namings: only the residual layer names change.
        idx, rest = m.groups()
        return f"encoder.down_blocks.{idx}.{_residual(rest, _RESIDUAL)}"
    if m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key):
        # Wan's decoder is flat: per level (num_res_blocks + 1) resnets then one upsampler (none on the last).
        level, j = divmod(int(m.group(1)), num_res_blocks + 2)
        rest = m.group(2)
        if j <= num_res_blocks:
            return f"decoder.up_blocks.{level}.resnets.{j}.{_residual(rest, _RESIDUAL)}"
        return f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
    return key


def diffusers_to_wan_key(key: str, num_res_blocks: int) -> str:
    """Wan2.1 name of one diffusers key: the inverse of ``wan_to_diffusers_key`` for the same config."""
    inv_residual = {v: k for k, v in _RESIDUAL.items()}
    if (new := _swap_prefix(key, {v: k for k, v in _FIXED.items()})) is not None:
        return new
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)\.(.+)", key):
        part, sub, rest = m.groups()
        idx = {v: k for k, v in _MIDDLE.items()}.get(sub)
        rest = _residual(rest, inv_residual) if sub.startswith("resnets") else rest
        return f"{part}.middle.{idx if idx is not None else sub}.{rest}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
        idx, rest = m.groups()
        return f"encoder.downsamples.{idx}.{_residual(rest, inv_residual)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        idx = level * (num_res_blocks + 2) + j
        return f"decoder.upsamples.{idx}.{_residual(rest, inv_residual)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        idx = int(m.group(1)) * (num_res_blocks + 2) + num_res_blocks + 1
        return f"decoder.upsamples.{idx}.{m.group(2)}"
    return key


# ---------------------------------------------------------------------------------------------------------
# Config from shapes
# ---------------------------------------------------------------------------------------------------------
def detect_format(keys: Sequence[str] | Mapping[str, object]) -> str | None:
    """``wan-single-file`` or ``diffusers-single-file`` from the key names; None when neither fits."""
    keys = set(keys)
    if "encoder.conv1.weight" in keys or any(k.startswith("encoder.downsamples.") for k in keys):
        return WAN_FORMAT
    if "encoder.conv_in.weight" in keys or any(k.startswith("encoder.down_blocks.") for k in keys):
        return DIFFUSERS_FILE_FORMAT
    return None


def _shape(value: object) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)  # tensors or plain shapes


def infer_vae_config(state_dict: Mapping[str, object]) -> dict:
    """AutoencoderKLQwenImage init kwargs from tensor shapes (tensors or shape tuples; either key naming).

    Recovers base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample and input_channels. Attention
    inside the down/up path (``attn_scales``) is not supported: Wan2.1 and Qwen-Image use none.
    """
    wan = detect_format(state_dict) == WAN_FORMAT
    if detect_format(state_dict) is None:
        raise InputError(f"not a Wan/Qwen-Image VAE state dict; first keys: {sorted(state_dict)[:_SHOW]}")
    conv_in, post_quant = (
        ("encoder.conv1.weight", "conv2.weight")
        if wan
        else ("encoder.conv_in.weight", "post_quant_conv.weight")
    )
    down, conv2 = (
        ("encoder.downsamples.", "residual.6.weight") if wan else ("encoder.down_blocks.", "conv2.weight")
    )
    for needed in (conv_in, post_quant):
        if needed not in state_dict:
            raise InputError(f"cannot infer the VAE config: key {needed!r} is missing")
    blocks: dict[int, str] = {}  # down-path index -> "res" | "down2d" | "down3d"
    for key in state_dict:
        if key.startswith(down):
            idx, rest = key[len(down) :].split(".", 1)
            if rest.startswith(("norm.", "to_qkv.", "proj.")):
                raise InputError(f"attention in the down path ({key}) is not supported")
            if rest == conv2:
                blocks[int(idx)] = "res"
            elif rest.startswith("time_conv."):
                blocks[int(idx)] = "down3d"
            elif rest.startswith("resample.") and blocks.get(int(idx)) != "down3d":
                blocks[int(idx)] = "down2d"
    out_dims = [_shape(state_dict[f"{down}{i}.{conv2}"])[0] for i in sorted(blocks) if blocks[i] == "res"]
    temporal = [blocks[i] == "down3d" for i in sorted(blocks) if blocks[i] != "res"]
    levels = len(temporal) + 1
    if not out_dims or len(out_dims) % levels:
        raise InputError(f"cannot infer the VAE config: {len(out_dims)} residual blocks over {levels} levels")
    res = len(out_dims) // levels
    base_dim, input_channels = _shape(state_dict[conv_in])[:2]
    return {
        "base_dim": base_dim,
        "z_dim": _shape(state_dict[post_quant])[0],
        "dim_mult": [out_dims[lv * res] // base_dim for lv in range(levels)],
        "num_res_blocks": res,
        "temperal_downsample": temporal,
        "input_channels": input_channels,
    }


# ---------------------------------------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------------------------------------
def _resolve(path: Path) -> tuple[Path, str, dict | None]:
    """(weights file, format, config.json dict or None) for a single file or a diffusers folder."""
    if path.is_dir():
        config_path, weights = path / "config.json", path / "diffusion_pytorch_model.safetensors"
        if not config_path.is_file() and (path / "vae" / "config.json").is_file():
            return _resolve(path / "vae")  # a pipeline folder: its VAE lives in vae/
        for needed in (config_path, weights):
            if not needed.is_file():
                raise ModelFileError(f"{path} ({DIFFUSERS_FOLDER_FORMAT}): {needed.name} is missing")
        config = AutoencoderKLQwenImage.load_config(str(path), local_files_only=True)
        if config.get("_class_name", "AutoencoderKLQwenImage") not in (
            "AutoencoderKLQwenImage",
            "AutoencoderKLWan",
        ):
            raise ModelFileError(
                f"{config_path}: _class_name {config['_class_name']!r} is not a Qwen-Image/Wan VAE"
            )
        return weights, DIFFUSERS_FOLDER_FORMAT, dict(config)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such VAE file or folder")
    return path, "", None


def load_vae(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderKLQwenImage:
    """Frozen, eval-mode Qwen-Image VAE from a Wan-named single file or a local diffusers folder.

    The model is built on the meta device and the tensors are assigned into it one by one, so the file is
    never held twice in memory. Any missing, unexpected or mis-shaped key raises ``ModelFileError``.
    """
    path = Path(path)
    weights, fmt, config = _resolve(path)
    shapes = tensor_shapes(weights)
    fmt = fmt or detect_format(shapes)
    if fmt is None:
        raise ModelFileError(
            f"{path}: keys are neither Wan2.1 nor diffusers VAE names; first: {sorted(shapes)[:_SHOW]}"
        )
    if config is None:
        try:
            config = infer_vae_config(shapes)
        except ValueError as exc:
            raise ModelFileError(f"{path} ({fmt}): {exc}") from exc
    res = config.get("num_res_blocks", 2)
    to_model = (lambda k: wan_to_diffusers_key(k, res)) if fmt == WAN_FORMAT else (lambda k: k)
    to_file = (lambda k: diffusers_to_wan_key(k, res)) if fmt == WAN_FORMAT else (lambda k: k)
    with torch.device("meta"):
        model = AutoencoderKLQwenImage.from_config(config)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    renamed = {to_model(k): s for k, s in shapes.items()}
    if len(renamed) != len(shapes):
        raise ModelFileError(f"{path} ({fmt}): two file keys map to one model key")
    check_layout(renamed, model_shapes, path, fmt, to_file)
    # One tensor at a time: a bf16 file cast to fp32 frees each bf16 tensor right after its copy.
    state = load_tensors(weights, {k: to_model(k) for k in shapes}, dtype, device, weights=True)
    model.load_state_dict(state, strict=True, assign=True)
    _check_materialised(model, path)
    return model.eval().requires_grad_(False)


def _check_materialised(model: torch.nn.Module, path: Path) -> None:
    """The model has no non-persistent buffers today; should diffusers add one, fail here, not at forward."""
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ModelFileError(f"{path}: tensors left on the meta device after loading: {on_meta[:_SHOW]}")


# ---------------------------------------------------------------------------------------------------------
# Pixels <-> normalised latents
# ---------------------------------------------------------------------------------------------------------
def _stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if z.shape[1] != len(LATENT_MEAN):
        raise InputError(f"latents need {len(LATENT_MEAN)} channels in dim 1, got shape {list(z.shape)}")
    view = (1, -1) + (1,) * (z.ndim - 2)  # broadcast over (H, W) or (T, H, W)
    mean = torch.tensor(LATENT_MEAN, dtype=z.dtype, device=z.device).view(view)
    std = torch.tensor(LATENT_STD, dtype=z.dtype, device=z.device).view(view)
    return mean, std


def normalise(z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent -> what the DiT sees: ``(z - mean) / std`` per channel (dim 1)."""
    mean, std = _stats(z)
    return (z - mean) / std


def denormalise(z: torch.Tensor) -> torch.Tensor:
    """DiT latent -> raw VAE latent: ``z * std + mean``, the inverse of ``normalise``."""
    mean, std = _stats(z)
    return z * std + mean


def _vae_dtype(vae: AutoencoderKLQwenImage) -> tuple[torch.device, torch.dtype]:
    param = next(vae.parameters())
    return param.device, param.dtype


def encode(vae: AutoencoderKLQwenImage, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, 16, H/8, W/8) normalised float32 latents.

    Deterministic: the posterior *mean* (its mode), not a sample, as ComfyUI and diffusers pipelines do when
    encoding reference images; sampling would add noise of std exp(logvar/2) that no caller here wants.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"pixels must be (B, 3, H, W), got {list(pixels.shape)}")
    factor = vae.spatial_compression_ratio
    if pixels.shape[-2] % factor or pixels.shape[-1] % factor:
        raise InputError(f"H and W must be multiples of {factor}, got {list(pixels.shape[-2:])}")
    if pixels.numel() and (pixels.min() < -1.001 or pixels.max() > 1.001):
        raise InputError(f"pixels must lie in [-1, 1], got [{pixels.min():.3g}, {pixels.max():.3g}]")
    device, dtype = _vae_dtype(vae)
    video = pixels.to(device=device, dtype=dtype).unsqueeze(2)  # (B, 3, 1, H, W): an image is a T=1 video
    z = vae.encode(video).latent_dist.mode()  # (B, 16, 1, H/8, W/8)
    return normalise(z.squeeze(2).float())  # (B, 16, H/8, W/8)


def decode(vae: AutoencoderKLQwenImage, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) normalised latents -> (B, 3, 8h, 8w) float32 pixels in [-1, 1] (the VAE clamps)."""
    if latents.ndim != 4:
        raise InputError(f"latents must be (B, 16, h, w), got {list(latents.shape)}")
    device, dtype = _vae_dtype(vae)
    z = denormalise(latents.float()).to(device=device, dtype=dtype).unsqueeze(2)  # (B, 16, 1, h, w)
    video = vae.decode(z).sample  # (B, 3, 1, 8h, 8w)
    return video.squeeze(2).float()  # (B, 3, 8h, 8w)
