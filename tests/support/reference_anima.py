"""Does the diffusers-based loader compute Anima's math? An independent plain-torch reference to compare against.

Written from the facts in docs/anima.md ("Architecture and dimensions", "Forward pass", "LLM adapter") alone, not
from diffusers, ComfyUI or any other implementation: it reads the *bare-named* published state dict
(`blocks.0.self_attn.q_proj.weight`, `llm_adapter.blocks.0.cross_attn.o_proj.weight`, ...) and runs MiniTrainDIT's
forward and the LLM adapter's with nothing but `torch.nn.functional`. Every dimension is read from tensor shapes. A
test helper, not part of the package.

The 3D RoPE split of a DiT head, generalised from the released 128 -> 42 (h) / 42 (w) / 44 (t):
    dim_h = dim_w = 2 * (head_dim // 6),   dim_t = head_dim - 2 * dim_h
(head_dim 32 -> 10/10/12, 64 -> 20/20/24, 128 -> 42/42/44). Each axis of width d has d/2 frequency pairs,
freq_i = theta^(-2i/d); theta_h = theta_w = 10000 * 4^(dim_h / (dim_h - 2)) (NTK extrapolation 4), theta_t = 10000.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6  # every RMSNorm and LayerNorm of the DiT and adapter
ROPE_THETA = 10000.0
SPATIAL_EXTRAPOLATION = 4.0  # rope_h / rope_w extrapolation (the in_channels == 16 branch); t is 1.0
ADAPTER_PREFIX = "llm_adapter."


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=EPS)  # no affine


def linear(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))


def rotate_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_j, x_{j+d/2}) by angles[..., j]; angles (L, d/2) broadcast over (B, H, L, d)."""
    cos, sin = angles.cos(), angles.sin()  # (L, d/2)
    a, b = x.chunk(2, dim=-1)  # (B, H, L, d/2) each
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention, scale 1/sqrt(head_dim); (B, H, L, d) in, (B, L, H*d) out."""
    w = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    out = w.softmax(-1) @ v  # (B, H, Lq, d)
    return out.transpose(1, 2).flatten(2)  # (B, Lq, H*d)


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    B, L, D = x.shape
    return x.view(B, L, D // head_dim, head_dim).transpose(1, 2)  # (B, H, L, d)


# ----------------------------------------------------------------------------------------------------------------
# DiT


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) of a DiT head: 128 -> (44, 42, 42)."""
    dim_h = 2 * (head_dim // 6)
    return head_dim - 2 * dim_h, dim_h, dim_h


def axis_freqs(dim: int, theta: float) -> torch.Tensor:
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)


def dit_rope_angles(head_dim: int, T: int, H: int, W: int,
                    extrapolation: float = SPATIAL_EXTRAPOLATION) -> torch.Tensor:
    """Angles (T*H*W, head_dim/2) for tokens in (t, h, w) order; the pair table is ordered [t, h, w]."""
    dim_t, dim_h, dim_w = rope_split(head_dim)
    theta_s = ROPE_THETA * extrapolation ** (dim_h / (dim_h - 2))
    ft, fh, fw = axis_freqs(dim_t, ROPE_THETA), axis_freqs(dim_h, theta_s), axis_freqs(dim_w, theta_s)
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    ang = torch.cat([t.reshape(-1, 1) * ft, h.reshape(-1, 1) * fh, w.reshape(-1, 1) * fw], dim=-1)
    return ang.float()  # (T*H*W, head_dim/2)


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """cat(cos, sin)(t * exp(-ln(1e4) * i / (dim/2))), i < dim/2; t (B,) -> (B, dim), fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)  # (half,)
    arg = t.float()[:, None] * freqs  # (B, half)
    return torch.cat([arg.cos(), arg.sin()], dim=-1)


def adaln(state: dict, name: str, emb: torch.Tensor) -> torch.Tensor:
    """Sequential(SiLU, Linear(D, r), Linear(r, k*D)), no biases."""
    return linear(state, f"{name}.2", linear(state, f"{name}.1", F.silu(emb)))


def dit_attention(state: dict, name: str, x: torch.Tensor, ctx: torch.Tensor | None,
                  angles: torch.Tensor | None, head_dim: int) -> torch.Tensor:
    """Self-attention (ctx None, RoPE) or cross-attention (no RoPE, no mask); q/k RMSNorm per head first."""
    src = x if ctx is None else ctx
    q = rms_norm(heads(linear(state, f"{name}.q_proj", x), head_dim), state[f"{name}.q_norm.weight"])  # (B,H,L,d)
    k = rms_norm(heads(linear(state, f"{name}.k_proj", src), head_dim), state[f"{name}.k_norm.weight"])
    v = heads(linear(state, f"{name}.v_proj", src), head_dim)  # v_norm is Identity
    if angles is not None:
        q, k = rotate_half(q, angles), rotate_half(k, angles)
    return linear(state, f"{name}.output_proj", attention(q, k, v))  # (B, L, D)


def dit_block(state: dict, i: int, x: torch.Tensor, emb: torch.Tensor, lora: torch.Tensor, ctx: torch.Tensor,
              angles: torch.Tensor, head_dim: int) -> torch.Tensor:
    b = f"blocks.{i}"
    for kind in ("self_attn", "cross_attn", "mlp"):
        shift, scale, gate = (adaln(state, f"{b}.adaln_modulation_{kind}", emb) + lora).chunk(3, dim=-1)  # (B,1,D)
        h = layer_norm(x) * (1 + scale) + shift  # (B, L, D)
        if kind == "self_attn":
            h = dit_attention(state, f"{b}.self_attn", h, None, angles, head_dim)
        elif kind == "cross_attn":
            h = dit_attention(state, f"{b}.cross_attn", h, ctx, None, head_dim)
        else:
            h = linear(state, f"{b}.mlp.layer2", F.gelu(linear(state, f"{b}.mlp.layer1", h)))
        x = x + gate * h  # raw gate: no tanh, no 1+
    return x


def reference_velocity(state: dict, x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor, patch: int = 2, *,
                       extrapolation: float = SPATIAL_EXTRAPOLATION) -> torch.Tensor:
    """MiniTrainDIT forward: latents x (B, C, H, W), sigma (B,) fed as the timestep, ctx (B, Lc, Dtext) -> (B, C, H, W).

    `extrapolation` (the h/w RoPE NTK factor) exists only so a test can show that a wrong value is visible.
    """
    B, C, H, W = x.shape
    D = state["x_embedder.proj.1.weight"].shape[0]
    head_dim = state["blocks.0.self_attn.q_norm.weight"].shape[0]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    p, Hp, Wp = patch, H // patch, W // patch
    x = torch.cat([x, x.new_zeros(B, 1, H, W)], dim=1)  # (B, C+1, H, W): all-zero padding-mask channel
    # "b c (t r) (h m) (w n) -> b t h w (c r m n)" with t = r = 1: channel-major within a patch
    x = x.view(B, C + 1, Hp, p, Wp, p).permute(0, 2, 4, 1, 3, 5).reshape(B, Hp * Wp, (C + 1) * p * p)
    x = linear(state, "x_embedder.proj.1", x)  # (B, L, D)
    s = timestep_sinusoid(sigma, D).to(x.dtype)[:, None]  # (B, 1, D)
    lora = linear(state, "t_embedder.1.linear_2", F.silu(linear(state, "t_embedder.1.linear_1", s)))  # (B, 1, 3D)
    emb = rms_norm(s, state["t_embedding_norm.weight"])  # (B, 1, D): norm of the RAW sinusoid
    angles = dit_rope_angles(head_dim, 1, Hp, Wp, extrapolation).to(x.device)  # (L, head_dim/2)
    for i in range(n_blocks):
        x = dit_block(state, i, x, emb, lora, ctx.to(x.dtype), angles, head_dim)
    shift, scale = (adaln(state, "final_layer.adaln_modulation", emb) + lora[..., : 2 * D]).chunk(2, dim=-1)
    x = linear(state, "final_layer.linear", layer_norm(x) * (1 + scale) + shift)  # (B, L, p*p*C)
    # "B T H W (p1 p2 t C) -> B C (T t) (H p1) (W p2)": channel-minor on the way out
    x = x.view(B, Hp, Wp, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, Hp, p1, Wp, p2)
    return x.reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------------------------
# LLM adapter


def adapter_rope_angles(head_dim: int, n: int) -> torch.Tensor:
    """HF-style rotate_half angles (n, head_dim/2) at positions 0..n-1, theta 10000."""
    return (torch.arange(n, dtype=torch.float64)[:, None] * axis_freqs(head_dim, ROPE_THETA)).float()


def adapter_attention(state: dict, name: str, x: torch.Tensor, src: torch.Tensor, head_dim: int) -> torch.Tensor:
    """q at target positions, k at source positions (both rotated); q/k RMSNorm per head before RoPE; no mask."""
    q = rms_norm(heads(linear(state, f"{name}.q_proj", x), head_dim), state[f"{name}.q_norm.weight"])  # (B,H,Lt,d)
    k = rms_norm(heads(linear(state, f"{name}.k_proj", src), head_dim), state[f"{name}.k_norm.weight"])  # (B,H,Ls,d)
    v = heads(linear(state, f"{name}.v_proj", src), head_dim)
    q = rotate_half(q, adapter_rope_angles(head_dim, x.shape[1]).to(x.device))
    k = rotate_half(k, adapter_rope_angles(head_dim, src.shape[1]).to(x.device))
    return linear(state, f"{name}.o_proj", attention(q, k, v))  # (B, Lt, M)


def reference_adapter(state: dict, qwen_hidden: torch.Tensor, t5_ids: torch.Tensor) -> torch.Tensor:
    """LLM adapter (single-prompt path, no masks): Qwen states (B, Ls, Ds) + T5 ids (B, Lt) -> (B, Lt, M).

    `state` may hold the whole file (keys `llm_adapter.*`) or the adapter alone (prefix already stripped).
    """
    if any(k.startswith(ADAPTER_PREFIX) for k in state):
        state = {k[len(ADAPTER_PREFIX):]: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
    head_dim = state["blocks.0.cross_attn.q_norm.weight"].shape[0]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    x = F.embedding(t5_ids, state["embed.weight"])  # (B, Lt, M); in_proj is Identity
    src = qwen_hidden.to(x.dtype)
    for i in range(n_blocks):
        b = f"blocks.{i}"
        if f"{b}.self_attn.q_proj.weight" in state:
            h = rms_norm(x, state[f"{b}.norm_self_attn.weight"])  # (B, Lt, M)
            x = x + adapter_attention(state, f"{b}.self_attn", h, h, head_dim)
        x = x + adapter_attention(state, f"{b}.cross_attn", rms_norm(x, state[f"{b}.norm_cross_attn.weight"]),
                                  src, head_dim)
        h = rms_norm(x, state[f"{b}.norm_mlp.weight"])
        x = x + linear(state, f"{b}.mlp.2", F.gelu(linear(state, f"{b}.mlp.0", h)))
    return rms_norm(linear(state, "out_proj", x), state["norm.weight"])  # (B, Lt, M)
