"""What are the two published modulation sources, and how are their files laid out? Modules and file formats.

Answers: "given a pooled text vector, what does each Anima port's trained source turn it into, and how is that
source stored?", without touching the model (where the vectors enter: ``families.py`` and ``modulation.py``).
Facts, with their sources: docs/modulation-guidance.md ("The paper", "The two Anima ports").

(a) sorryhyun's ``pooled_text_proj`` (self-distilled on Anima): max-pooled ``crossattn_emb`` (B, 1024) ->
    ``Linear -> SiLU -> Linear`` -> (B, D), added to the output of ``t_embedding_norm``. bf16 safetensors with keys
    ``0.weight, 0.bias, 2.weight, 2.bias`` (+ optional ``sigma_film.*``).
(b) The paper's official Cosmos adapter (``cosmos-pooled``, used by Anzhc's node): CLIP-L pooler output (B, 768)
    -> PixArt-alpha text projection -> m (B, 3D); block i adds ``scales[i] * m`` to the AdaLN-LoRA vector.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from anima_probe.errors import InputError, MissingFileError
from anima_probe.model.files import ModelFileError, check_layout, load_tensors, read_metadata, save_tensors
from anima_probe.pipeline.atomic import atomic_path

TEXT_DIM = 1024  # Anima's crossattn_emb width (post-LLMAdapter)
CLIP_DIM = 768  # CLIP-L pooler_output
REFERENCE_BLOCKS = 28  # Anima / Cosmos-Predict2-2B depth, which the named profiles are written for
POOLED_TEXT_PROJ_FORMAT = "pooled_text_proj"
COSMOS_ADAPTER_FORMAT = "cosmos_pooled_adapter"
FORMAT_VERSION = "1"
_META_FORMAT, _META_VERSION = "anima_probe.format", "anima_probe.format_version"


def _check_finite(tensors: Mapping[str, torch.Tensor], path) -> None:
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ModelFileError(f"{path}: key {key!r} holds non-finite values")


def _read_safetensors(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    meta = read_metadata(path)
    # files written elsewhere (the community's) carry no metadata: only a contradicting tag is an error
    if meta.get(_META_FORMAT, fmt) != fmt:
        raise ModelFileError(f"{path}: metadata says format {meta[_META_FORMAT]!r}, expected {fmt!r}")
    return load_tensors(path)


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    return path


# ------------------------------------------------------------------------------- (a) pooled_text_proj
class PooledTextProjection(nn.Module):
    """sorryhyun's mod head: ``Linear(text_dim, D) -> SiLU -> Linear(D, D)``, output Linear zero-initialised.

    Submodules are registered as ``0``, ``1``, ``2`` so ``state_dict()`` keys are exactly the community file's.
    Optional sigma-FiLM (``sigma_film = Linear(D, 2D)``, zero-init = identity): with ``h = Linear_0(pooled)``,
    ``(scale, shift) = sigma_film(t_emb).chunk(2)`` and ``h <- h * (1 + scale) + shift`` *before* the SiLU, where
    ``t_emb`` is the ``t_embedding_norm`` output. This follows the docstring of sorryhyun's ``project_pooled``
    (mod_guidance_core.py); the training write-ups only say "FiLM on the hidden", and the author reports the
    FiLM head inert, so treat it as a format to load rather than a studied mechanism.
    """

    def __init__(self, model_channels: int, text_dim: int = TEXT_DIM, sigma_film: bool = False):
        super().__init__()
        self.model_channels, self.text_dim = model_channels, text_dim
        self.add_module("0", nn.Linear(text_dim, model_channels))
        self.add_module("1", nn.SiLU())
        self.add_module("2", nn.Linear(model_channels, model_channels))
        nn.init.zeros_(self.linear_in.bias)  # as the community trainer: kaiming weight, zero bias
        nn.init.zeros_(self.linear_out.weight)  # zero output: a no-op until trained
        nn.init.zeros_(self.linear_out.bias)
        self.sigma_film: nn.Linear | None = None
        if sigma_film:
            self.sigma_film = nn.Linear(model_channels, 2 * model_channels)
            nn.init.zeros_(self.sigma_film.weight)
            nn.init.zeros_(self.sigma_film.bias)

    @property
    def linear_in(self) -> nn.Linear:
        return getattr(self, "0")

    @property
    def linear_out(self) -> nn.Linear:
        return getattr(self, "2")

    def forward(self, pooled: torch.Tensor, t_emb: torch.Tensor | None = None, *, sigma_flat: bool = False):
        """pooled (B, text_dim) [+ t_emb (B, D) when FiLM is armed] -> (B, D) in the weights' dtype.

        ``sigma_flat=True`` skips an armed FiLM (what the community inference bake does without a t_emb).
        """
        if pooled.shape[-1] != self.text_dim:
            raise InputError(f"pooled_text_proj expects (B, {self.text_dim}), got {tuple(pooled.shape)}")
        w = self.linear_in.weight
        h = self.linear_in(pooled.to(w.dtype))  # (B, D)
        if self.sigma_film is not None and not sigma_flat:
            if t_emb is None:
                raise InputError("pooled_text_proj has sigma_film armed: pass t_emb (B, D), or sigma_flat=True")
            if t_emb.shape[-1] != self.model_channels:
                raise InputError(f"t_emb must end in D={self.model_channels}, got {tuple(t_emb.shape)}")
            scale, shift = self.sigma_film(t_emb.to(w.dtype)).chunk(2, dim=-1)  # (B, D) each
            h = h * (1 + scale) + shift
        return self.linear_out(getattr(self, "1")(h))  # (B, D)


def save_pooled_text_proj(module: PooledTextProjection, path) -> Path:
    """Write the community format: bf16 safetensors, keys ``0.*``, ``2.*`` (+ ``sigma_film.*``), plus metadata."""
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in module.state_dict().items()}
    meta = {_META_FORMAT: POOLED_TEXT_PROJ_FORMAT, _META_VERSION: FORMAT_VERSION,
            "model_channels": str(module.model_channels), "text_dim": str(module.text_dim),
            "sigma_film": str(module.sigma_film is not None).lower()}
    return save_tensors(tensors, path, meta)


def pooled_text_proj_layout(model_channels: int, text_dim: int = TEXT_DIM, sigma_film: bool = False):
    d = model_channels
    layout = {"0.weight": (d, text_dim), "0.bias": (d,), "2.weight": (d, d), "2.bias": (d,)}
    if sigma_film:
        layout |= {"sigma_film.weight": (2 * d, d), "sigma_film.bias": (2 * d,)}
    return layout


def load_pooled_text_proj(path, model_channels: int | None = None) -> PooledTextProjection:
    """Read a ``pooled_text_proj`` safetensors file into an fp32 module; ``sigma_film.*`` keys arm the FiLM.

    Validates every key and shape (errors name the file and key) and, when given, ``0.weight.shape[0] ==
    model_channels`` as the community loader does.
    """
    path = _existing(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path}: pooled_text_proj files are .safetensors, got {path.suffix!r}")
    tensors = _read_safetensors(path, POOLED_TEXT_PROJ_FORMAT)
    first = tensors.get("0.weight")
    if first is None or first.ndim != 2:
        got = None if first is None else tuple(first.shape)
        raise ModelFileError(f"{path}: pooled_text_proj needs key '0.weight' of shape (D, text_dim), got {got}")
    d, text_dim = first.shape
    if model_channels is not None and d != model_channels:
        raise ModelFileError(f"{path}: key '0.weight' has D={d} rows but the model has "
                                  f"model_channels={model_channels}")
    film = any(k.startswith("sigma_film.") for k in tensors)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    check_layout(shapes, pooled_text_proj_layout(d, text_dim, film), path, POOLED_TEXT_PROJ_FORMAT)
    _check_finite(tensors, path)
    module = PooledTextProjection(d, text_dim, sigma_film=film)
    module.load_state_dict({k: v.float() for k, v in tensors.items()})
    return module


# ------------------------------------------------------------------------------- (b) official Cosmos adapter
class _TextProjection(nn.Module):
    """PixArt-alpha's text projection with SiLU: ``linear_1 -> act_1 -> linear_2`` (the official key names)."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class CosmosPooledAdapter(nn.Module):
    """The paper's Section-5 pooled path for Cosmos: ``m = P(clip)`` (B, 3D); block i adds ``scales[i] * m``.

    ``P`` keeps PyTorch's default init (as the official code); the zero-initialised per-block ``scales`` are
    what make the path a no-op before training. ``3D`` is the AdaLN-LoRA width (shift/scale/gate, D each).
    """

    def __init__(self, model_channels: int = 2048, num_blocks: int = REFERENCE_BLOCKS, clip_dim: int = CLIP_DIM):
        super().__init__()
        self.model_channels, self.num_blocks, self.clip_dim = model_channels, num_blocks, clip_dim
        self.text_embedder_clip = _TextProjection(clip_dim, 3 * model_channels)
        self.scales = nn.Parameter(torch.zeros(num_blocks, 3 * model_channels))  # (N, 3D)

    def project(self, pooled_clip: torch.Tensor) -> torch.Tensor:
        """pooled_clip (B, clip_dim) -> m (B, 3D), in the weights' dtype."""
        if pooled_clip.shape[-1] != self.clip_dim:
            raise InputError(f"cosmos adapter expects pooled CLIP (B, {self.clip_dim}), got {tuple(pooled_clip.shape)}")
        return self.text_embedder_clip(pooled_clip.to(self.scales.dtype))  # (B, 3D)

    def block_term(self, m: torch.Tensor, block_index: int) -> torch.Tensor:
        """``scales[i] * m`` (B, 3D): what block i adds to the AdaLN-LoRA vector ``temb``."""
        if not 0 <= block_index < self.num_blocks:
            raise IndexError(f"block_index {block_index} out of range for {self.num_blocks} blocks")
        return self.scales[block_index] * m  # (B, 3D)


def cosmos_adapter_layout(model_channels: int, num_blocks: int, clip_dim: int = CLIP_DIM):
    h = 3 * model_channels
    return {"text_embedder_clip.linear_1.weight": (h, clip_dim), "text_embedder_clip.linear_1.bias": (h,),
            "text_embedder_clip.linear_2.weight": (h, h), "text_embedder_clip.linear_2.bias": (h,),
            "scales": (num_blocks, h)}


def _read_torch_pickle(path: Path) -> dict:
    try:  # weights_only: tensors and plain containers only, never arbitrary objects
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"{path}: refused to unpickle (it holds more than tensors): {e}") from e
    except Exception as e:
        raise ModelFileError(f"{path}: not a readable torch file ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: expected a flat dict of tensors, got {type(obj).__name__}")
    return obj


def load_cosmos_pooled_adapter(path, model_channels: int | None = None,
                               num_blocks: int | None = None) -> CosmosPooledAdapter:
    """Read the official ``checkpoint_4000.pt`` layout (pickle via ``weights_only=True``) or safetensors.

    D and the block count are inferred from ``linear_1.weight`` (3D, clip_dim) and ``scales`` (N, 3D); pass
    ``model_channels`` / ``num_blocks`` to check them against the model.
    """
    path = _existing(path)
    if path.suffix == ".safetensors":
        tensors = _read_safetensors(path, COSMOS_ADAPTER_FORMAT)
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        tensors = _read_torch_pickle(path)
    else:
        raise ModelFileError(f"{path}: unknown adapter file type {path.suffix!r} (.pt or .safetensors)")
    first, scales = tensors.get("text_embedder_clip.linear_1.weight"), tensors.get("scales")
    for key, t in (("text_embedder_clip.linear_1.weight", first), ("scales", scales)):
        if t is None or t.ndim != 2:
            raise ModelFileError(f"{path}: cosmos adapter needs a 2-D key {key!r}, "
                                      f"got {None if t is None else tuple(t.shape)}")
    h, clip_dim = first.shape
    if h % 3:
        raise ModelFileError(f"{path}: key 'text_embedder_clip.linear_1.weight' has {h} rows, not 3*D")
    d, n = h // 3, scales.shape[0]
    for name, want, got in (("model_channels", model_channels, d), ("num_blocks", num_blocks, n)):
        if want is not None and want != got:
            raise ModelFileError(f"{path}: adapter has {name}={got} but the model has {want}")
    check_layout({k: tuple(v.shape) for k, v in tensors.items()}, cosmos_adapter_layout(d, n, clip_dim), path,
                 COSMOS_ADAPTER_FORMAT)
    _check_finite(tensors, path)
    module = CosmosPooledAdapter(d, n, clip_dim)
    module.load_state_dict({k: v.float() for k, v in tensors.items()})
    return module


def save_cosmos_pooled_adapter(module: CosmosPooledAdapter, path) -> Path:
    """Same flat dict layout as the official file: ``.pt`` via ``torch.save`` of plain tensors, or safetensors."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        save_tensors(tensors, path, {_META_FORMAT: COSMOS_ADAPTER_FORMAT, _META_VERSION: FORMAT_VERSION})
    elif path.suffix in (".pt", ".pth"):
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
    else:
        raise ModelFileError(f"{path}: save as .pt or .safetensors, got {path.suffix!r}")
    return path
