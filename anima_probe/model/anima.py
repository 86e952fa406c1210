"""The frozen Anima, loaded from its published files: DiT + LLM adapter, Qwen3 text encoder, tokenizers, VAE.

Built on diffusers' `CosmosTransformer3DModel` / `AnimaTextConditioner` and transformers' `Qwen3Model`, configured from
tensor shapes, with the two deviations of diffusers from Anima corrected (docs/anima.md, "Building it on diffusers"):
the per-head q/k RMSNorm eps is 1e-6, and the RoPE table is large enough for any image size users run. The
padding-mask channel (all zeros for text-to-image) is concatenated here, so nothing needs torchvision.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AnimaTextConditioner, CosmosTransformer3DModel
from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers
from transformers import Qwen3Config, Qwen3Model

from anima_probe.errors import InputError, MissingFileError
from anima_probe.model import dit_file as ckpt
from anima_probe.model.dit_file import AdapterConfig, DiTConfig
from anima_probe.model.files import (
    ModelFileError,
    check_layout,
    count_indexed,
    load_tensors,
    required_shape,
    tensor_shapes,
)

QK_NORM_EPS = 1e-6  # Anima's per-head q/k RMSNorm; diffusers builds 1e-5
ROPE_MAX_SIZE = (128, 1056, 1056)  # (t, h, w) in latent pixels; diffusers' default 240 caps images at 2048 px
ROPE_SCALE = (1.0, 4.0, 4.0)  # (t, h, w) NTK extrapolation; the class default (2, 1, 1) is Cosmos-video's
CROSSATTN_TOKENS = 512  # the DiT always sees 512 rows, zero-padded (the zeros act as attention sinks)
QWEN_ROPE_THETA = 1_000_000.0


@dataclass
class Anima:
    """Everything frozen that a probe needs, on one device and dtype."""

    transformer: CosmosTransformer3DModel
    adapter: AnimaTextConditioner
    dit_config: DiTConfig
    text_encoder: Qwen3Model | None = None
    qwen_tokenizer: object | None = None
    t5_tokenizer: object | None = None
    vae: torch.nn.Module | None = None
    files: dict[str, Path] = field(default_factory=dict)  # role -> file or folder it came from
    name: str = "anima"

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, crossattn_emb: torch.Tensor) -> torch.Tensor:
        """Flow velocity v ≈ noise − x0 for latents x_t (B, C, H, W) at sigma ∈ [0, 1]."""
        return dit_velocity(self.transformer, x_t, sigma, crossattn_emb)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Model space -> RGB in [0, 1], (B, 3, H', W'). Pixel-space models (the toy world) have no VAE."""
        from anima_probe.model.vae import decode

        pixels = decode(self.vae, x0) if self.vae is not None else x0.float()  # [-1, 1]
        return ((pixels + 1) / 2).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, H, W) -> model space (normalised latents, or [-1, 1] pixels without a VAE)."""
        from anima_probe.model.vae import encode

        pixels = images.float() * 2 - 1
        return encode(self.vae, pixels) if self.vae is not None else pixels


def dit_velocity(transformer: CosmosTransformer3DModel, x_t: torch.Tensor, sigma, crossattn_emb: torch.Tensor, *,
                 fold: bool = True):
    """The one DiT call convention: sigma fed as the timestep (not ×1000), all-zero padding-mask channel, T = 1.
    ``fold=False`` attends to every one of the 512 text rows: ``fold_padding``'s reference, for tests and
    benchmarks."""
    B, C, H, W = x_t.shape
    p = transformer.config.patch_size[1]
    if H % p or W % p:
        raise InputError(f"latent size {H}x{W} is not a multiple of the patch size {p}")
    dtype = transformer.patch_embed.proj.weight.dtype
    sigma = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1).expand(B)  # (B,)
    x = x_t.to(dtype).unsqueeze(2)  # (B, C, 1, H, W): an image is a one-frame video
    mask = x.new_zeros(B, 1, 1, H, W)  # padding-mask channel, all zeros for text-to-image
    context, logit_bias = fold_padding(crossattn_emb.to(dtype)) if fold else (crossattn_emb.to(dtype), None)
    out = transformer(
        hidden_states=torch.cat([x, mask], dim=1),  # (B, C+1, 1, H, W)
        timestep=sigma.to(dtype),
        encoder_hidden_states=context,  # (B, L+1, D_text): the 512 rows with their padding folded
        attention_mask=logit_bias,  # (B, L+1) added to the cross-attention logits
        return_dict=False,
    )[0]
    return out.squeeze(2)  # (B, C, H, W)


def fold_padding(crossattn_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cross-attention context with its run of identical trailing rows folded into one row and a logit bias.

    Past the longest prompt every row of the 512 is the same zero padding, so those rows have equal keys and values:
    n equal keys with logit l weigh exactly what one such key with logit l + log n weighs. The DiT attends to the
    rows up to the last one that differs plus one representative of the tail, whose logit gets log n through the
    additive float `attention_mask` diffusers hands to scaled_dot_product_attention. The padding still acts as the
    attention sink it is in Anima; only its n copies are not computed. Equal in exact arithmetic; in float32 the
    velocity moves by about 1e-6 (one scaled exponential in place of a sum of n; tests/unit/model/test_fold_padding.py
    compares it with the 512-row call). On the toy model it removes ~500 of 512 key/value rows per block: 0.70x the
    CPU of a call (reports/benchmarks/dit-call.json).
    """
    B, S, _ = crossattn_emb.shape
    differs = (crossattn_emb != crossattn_emb[:, -1:]).any(-1).any(0)  # (S,): some prompt's row is not the tail's
    kept = int(differs.nonzero().max()) + 1 if bool(differs.any()) else 0  # rows before the identical tail
    if S - kept < 2:
        return crossattn_emb, None
    bias = crossattn_emb.new_zeros(B, kept + 1)
    bias[:, kept] = math.log(S - kept)
    return crossattn_emb[:, : kept + 1], bias


# ----------------------------------------------------------------------------------------------------------------
# DiT + adapter


def _construct(meta: bool):
    """Loading builds on `meta` (weights are assigned from the file, never allocated twice); training builds real."""
    return init_empty_weights(include_buffers=False) if meta else contextlib.nullcontext()


def build_transformer(c: DiTConfig, meta: bool = True) -> CosmosTransformer3DModel:
    """A transformer for config `c`, empty (meta) unless asked otherwise."""
    with _construct(meta):
        model = CosmosTransformer3DModel(
            in_channels=c.in_channels + 1,  # +1: the padding-mask channel we concatenate ourselves
            out_channels=c.out_channels,
            num_attention_heads=c.num_heads,
            attention_head_dim=c.head_dim,
            num_layers=c.num_blocks,
            mlp_ratio=c.mlp_hidden / c.hidden,
            text_embed_dim=c.text_dim,
            adaln_lora_dim=c.adaln_lora_dim,
            max_size=ROPE_MAX_SIZE,
            patch_size=(1, c.patch, c.patch),
            rope_scale=ROPE_SCALE,
            concat_padding_mask=False,
            extra_pos_embed_type=None,
        )
    _fix_qk_norm_eps(model)
    return model


def _fix_qk_norm_eps(model: CosmosTransformer3DModel) -> None:
    for block in model.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = QK_NORM_EPS
            attn.norm_k.eps = QK_NORM_EPS


def build_adapter(c: AdapterConfig, meta: bool = True) -> AnimaTextConditioner:
    with _construct(meta):
        return AnimaTextConditioner(
            source_dim=c.source_dim,
            target_dim=c.model_dim,
            model_dim=c.model_dim,
            num_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            mlp_ratio=c.mlp_hidden / c.model_dim,
            target_vocab_size=c.vocab,
            use_self_attention=c.self_attn,
            use_layer_norm=False,
            min_sequence_length=CROSSATTN_TOKENS,
        )


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval().requires_grad_(False)
    return module


def load_dit_file(path: Path, device="cpu", dtype=torch.float32):
    """DiT + adapter from the single file as published (prefix `net.`, `model.diffusion_model.` or none)."""
    path = Path(path)
    shapes = tensor_shapes(path)
    prefix = ckpt.detect_prefix(shapes, path)
    fmt = f"anima single file, prefix '{prefix or '<none>'}'"
    dit_shapes = {k[len(prefix):]: s for k, s in shapes.items()
                  if k.startswith(prefix) and not k[len(prefix):].startswith(ckpt.ADAPTER_PREFIX)}
    ad_shapes = {k[len(prefix) + len(ckpt.ADAPTER_PREFIX):]: s for k, s in shapes.items()
                 if k.startswith(prefix + ckpt.ADAPTER_PREFIX)}
    stray = [k for k in shapes if not k.startswith(prefix)]
    if stray:
        raise ModelFileError(f"{path} ({fmt}): {len(stray)} unexpected keys outside the prefix: {stray[:5]}")
    if not ad_shapes:
        raise ModelFileError(f"{path} ({fmt}): no '{ckpt.ADAPTER_PREFIX}*' keys; the LLM adapter ships in this file")
    dit_c = ckpt.infer_dit_config(dit_shapes, path)
    ad_c = ckpt.infer_adapter_config(ad_shapes, path)
    check_layout(dit_shapes, ckpt.dit_layout(dit_c), path, fmt, prefix)
    check_layout(ad_shapes, ckpt.adapter_layout(ad_c), path, fmt, prefix + ckpt.ADAPTER_PREFIX)

    # The adapter is split off first: diffusers' Cosmos converter does plain substring replacements that would
    # mangle adapter keys (e.g. "q_proj" -> "to_q").
    adapter = build_adapter(ad_c)
    ad_sd = load_tensors(path, {prefix + ckpt.ADAPTER_PREFIX + k: k for k in ad_shapes}, dtype, device, weights=True)
    adapter.load_state_dict(ad_sd, strict=True, assign=True)
    del ad_sd
    transformer = build_transformer(dit_c)
    dit_sd = load_tensors(path, {prefix + k: k for k in dit_shapes}, dtype, device, weights=True)
    dit_sd = convert_cosmos_transformer_checkpoint_to_diffusers(dit_sd)
    transformer.load_state_dict(dit_sd, strict=True, assign=True)
    return _freeze(transformer), _freeze(adapter), dit_c


def load_dit_diffusers(folder: Path, device="cpu", dtype=torch.float32):
    """The diffusers-format layout of the Anima Diffusers repo: `transformer/` + `text_conditioner/`."""
    folder = Path(folder)
    raw = CosmosTransformer3DModel.load_config(folder / "transformer", local_files_only=True)
    override = {"max_size": ROPE_MAX_SIZE}
    if raw.get("concat_padding_mask", True):
        # The published config concatenates the mask channel inside diffusers (which needs torchvision); the weights
        # already take in_channels+1 inputs, so declare them and let `dit_velocity` append the all-zero channel.
        override.update(in_channels=raw["in_channels"] + 1, concat_padding_mask=False)
    transformer = CosmosTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype,
                                                           local_files_only=True, **override)
    adapter = AnimaTextConditioner.from_pretrained(folder / "text_conditioner", torch_dtype=dtype,
                                                   local_files_only=True)
    _fix_qk_norm_eps(transformer)
    cfg = transformer.config
    if tuple(cfg.rope_scale) != ROPE_SCALE or cfg.extra_pos_embed_type is not None:
        raise ModelFileError(f"{folder / 'transformer'}: rope_scale {cfg.rope_scale} / extra_pos_embed_type "
                              f"{cfg.extra_pos_embed_type!r} are not Anima's ({ROPE_SCALE}, None)")
    c = DiTConfig(hidden=cfg.num_attention_heads * cfg.attention_head_dim, num_blocks=cfg.num_layers,
                  head_dim=cfg.attention_head_dim, mlp_hidden=int(cfg.mlp_ratio * cfg.num_attention_heads
                                                                  * cfg.attention_head_dim),
                  text_dim=cfg.text_embed_dim, adaln_lora_dim=cfg.adaln_lora_dim, in_channels=cfg.in_channels - 1,
                  out_channels=cfg.out_channels, patch=cfg.patch_size[1])
    return _freeze(transformer.to(device)), _freeze(adapter.to(device)), c


# ----------------------------------------------------------------------------------------------------------------
# Qwen3 text encoder


def qwen3_config(shapes: dict[str, tuple[int, ...]], path) -> Qwen3Config:
    vocab, hidden = required_shape(shapes, "embed_tokens.weight", path)
    head_dim = required_shape(shapes, "layers.0.self_attn.q_norm.weight", path)[0]
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=required_shape(shapes, "layers.0.mlp.gate_proj.weight", path)[0],
        num_hidden_layers=count_indexed(shapes, r"layers\.(\d+)\.mlp\.gate_proj\.weight$"),
        num_attention_heads=required_shape(shapes, "layers.0.self_attn.q_proj.weight", path)[0] // head_dim,
        num_key_value_heads=required_shape(shapes, "layers.0.self_attn.k_proj.weight", path)[0] // head_dim,
        head_dim=head_dim,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": QWEN_ROPE_THETA},
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    )


def load_qwen3_file(path: Path, device="cpu", dtype=torch.float32) -> Qwen3Model:
    """Qwen3-0.6B Base single file, HF key names with or without `model.` (the tied `lm_head` is ignored)."""
    path = Path(path)
    shapes = tensor_shapes(path)
    prefix = "model." if any(k.startswith("model.") for k in shapes) else ""
    bare = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
    fmt = f"qwen3 single file, prefix '{prefix or '<none>'}'"
    config = qwen3_config(bare, path)
    with init_empty_weights(include_buffers=False):
        model = Qwen3Model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: s for k, s in bare.items()}
    found.update({k: s for k, s in shapes.items() if not k.startswith(prefix) and k != "lm_head.weight"})
    check_layout(found, expected, path, fmt, prefix)
    sd = load_tensors(path, {prefix + k: k for k in expected}, dtype, device, weights=True)
    model.load_state_dict(sd, strict=True, assign=True)
    return _freeze(model)


# ----------------------------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class ModelFiles:
    """Where each part lives. `dit` is a single file, or a diffusers folder holding transformer/ + text_conditioner/."""

    dit: Path
    text_encoder: Path | None
    qwen_tokenizer: Path | None
    t5_tokenizer: Path | None
    vae: Path | None = None


_SUBDIRS = {
    "dit": ("diffusion_models", "split_files/diffusion_models", "models/diffusion_models"),
    "text_encoder": ("text_encoders", "split_files/text_encoders", "models/text_encoders"),
    "vae": ("vae", "split_files/vae", "models/vae"),
}


def _one_file(root: Path, role: str, required: bool) -> Path | None:
    looked = []
    for sub in _SUBDIRS[role]:
        d = root / sub
        looked.append(str(d))
        files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise MissingFileError(f"{d}: {len(files)} .safetensors files ({names}); choose one with --{role.replace('_', '-')}")
    if required:
        raise MissingFileError(f"no {role} .safetensors found under {root} (looked in {', '.join(looked)})")
    return None


def find_model_files(root: Path, **overrides) -> ModelFiles:
    """Resolve `--model DIR` by the names and sub-folders the files are published under; per-file overrides win."""
    from anima_probe.model.tokenization import find_tokenizer_dirs

    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"--model {root}: not a folder")
    if (root / "transformer" / "config.json").is_file():  # diffusers layout
        dit, te = root, root / "text_encoder"
    else:
        dit = overrides.get("dit") or _one_file(root, "dit", True)
        te = overrides.get("text_encoder") or _one_file(root, "text_encoder", False)
    vae = overrides.get("vae") or (_one_file(root, "vae", False) if not (root / "vae" / "config.json").is_file()
                                   else root / "vae")
    qtok, ttok = overrides.get("qwen_tokenizer"), overrides.get("t5_tokenizer")
    if qtok is None or ttok is None:
        found = find_tokenizer_dirs(overrides.get("tokenizers") or root)
        qtok, ttok = qtok or found[0], ttok or found[1]
    return ModelFiles(dit=Path(dit), text_encoder=te and Path(te), qwen_tokenizer=Path(qtok),
                      t5_tokenizer=Path(ttok), vae=vae and Path(vae))


def load_anima(model: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, with_vae: bool = True, with_text: bool = True,
               **overrides) -> Anima:
    """Load the frozen Anima. `model` is a model folder (default: the bundled toy world); overrides name files:
    dit=, text_encoder=, vae=, qwen_tokenizer=, t5_tokenizer=, tokenizers= (e.g. a ComfyUI install root)."""
    from anima_probe.model.tokenization import load_tokenizers
    from anima_probe.model.vae import load_vae

    unknown = set(overrides) - {"dit", "text_encoder", "vae", "qwen_tokenizer", "t5_tokenizer", "tokenizers"}
    if unknown:
        raise TypeError(f"load_anima: unknown file roles {sorted(unknown)}")
    root = Path(model) if model is not None else default_model_dir()
    files = find_model_files(root, **{k: v for k, v in overrides.items() if v is not None})
    if files.dit.is_dir():
        transformer, adapter, dit_c = load_dit_diffusers(files.dit, device, dtype)
        te_path = files.dit / "text_encoder"
        text_encoder = (_freeze(Qwen3Model.from_pretrained(te_path, torch_dtype=dtype, local_files_only=True).to(device))
                        if with_text else None)
    else:
        transformer, adapter, dit_c = load_dit_file(files.dit, device, dtype)
        if with_text and files.text_encoder is None:
            raise MissingFileError(f"--model {root}: no text encoder found; pass --text-encoder FILE")
        text_encoder = load_qwen3_file(files.text_encoder, device, dtype) if with_text else None
    qtok = ttok = None
    if with_text:
        qtok, ttok = load_tokenizers(files.qwen_tokenizer, files.t5_tokenizer)
    vae = load_vae(files.vae, device=device, dtype=dtype) if with_vae and files.vae is not None else None
    _check_agreement(files, dit_c, adapter, text_encoder, vae)
    roles = {"dit": files.dit, "text_encoder": files.text_encoder, "vae": files.vae if vae is not None else None,
             "qwen_tokenizer": files.qwen_tokenizer, "t5_tokenizer": files.t5_tokenizer}
    return Anima(transformer=transformer, adapter=adapter, dit_config=dit_c, text_encoder=text_encoder,
                 qwen_tokenizer=qtok, t5_tokenizer=ttok, vae=vae, files={k: v for k, v in roles.items() if v},
                 name=_model_name(root, files))


def require_images(anima: Anima, why: str) -> None:
    """A latent DiT without a VAE cannot make RGB images: one error naming why they were wanted."""
    if anima.vae is None and anima.dit_config.in_channels != 3:
        raise InputError(f"{why}, but the DiT in {anima.files['dit']} samples {anima.dit_config.in_channels}-channel "
                         "latents and no VAE was found (a vae/ folder beside it, or --vae FILE)")


def _check_agreement(files: ModelFiles, dit_c: DiTConfig, adapter, text_encoder, vae) -> None:
    """The files come from one model: each loads on its own, but a text encoder of another width (or a VAE with
    other latent channels) would only fail as a matrix-shape error deep inside the first forward."""
    width, reads = (text_encoder.config.hidden_size, adapter.config.source_dim) if text_encoder is not None else (0, 0)
    if width != reads:
        raise InputError(f"{files.text_encoder}: the text encoder's width is {width}, but the LLM adapter in "
                         f"{files.dit} reads {reads}: the two files are from different models")
    channels = vae.config.z_dim if vae is not None else dit_c.in_channels
    if channels != dit_c.in_channels:
        raise InputError(f"{files.vae}: the VAE's latents have {channels} channels, but the DiT in {files.dit} "
                         f"samples {dit_c.in_channels}: the two files are from different models")


def _model_name(root: Path, files: ModelFiles) -> str:
    stem = files.dit.name if files.dit.is_dir() else files.dit.stem
    return re.sub(r"\s+", "_", stem)


def default_model_dir() -> Path:
    """The toy world shipped in the repository (see data/toyworld/README.md)."""
    return Path(__file__).resolve().parents[2] / "data" / "toyworld" / "model"
