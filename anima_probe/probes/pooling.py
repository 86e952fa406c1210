"""Which pooled text vector carries the style?

Modulation guidance needs one global vector per prompt, but Anima only produces token sequences:
`prompt_embeds` (Qwen3 last hidden state, pre-adapter) and `crossattn_emb` (post-LLMAdapter, zero-padded to
512 rows). This module turns a (B, L, D) sequence into a (B, D) vector in the ways the proposal compared, so
that an experiment can ask which pooling keeps artist/quality information.

Two families of reductions:
- ``over="padded"`` reduces over all L rows exactly as the community code does
  (``crossattn_emb.max(dim=1).values``, ``.mean(dim=1)``). The zero pad rows take part, so a max floors every
  dimension at 0 and a mean is shrunk by ``n_tokens / L``. That distortion is what the comparison measures.
- ``over="tokens"`` reduces over the real tokens only (``mask`` True), so padding has no effect.

``eos`` picks the last real token. "The last row of the padded sequence" would be a pad row (all zeros), which
is meaningless, so ``eos`` with ``over="padded"`` is defined to be the same last-real-token pick as
``over="tokens"``; `STRATEGIES` therefore lists ``eos`` once.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("max", "mean", "eos")
OVERS = ("padded", "tokens")

# Stable name -> (strategy, over). Only pairs that mean different things are listed; these names are the
# suffixes of metric keys such as "nmi/max_padded", so never rename one without bumping experiment versions.
STRATEGIES: dict[str, tuple[str, str]] = {
    "max_padded": ("max", "padded"),
    "max_tokens": ("max", "tokens"),
    "mean_padded": ("mean", "padded"),
    "mean_tokens": ("mean", "tokens"),
    "eos": ("eos", "tokens"),
}


def _check_inputs(x: torch.Tensor, mask: torch.Tensor) -> None:
    """Shape/dtype checks plus the one data error that would silently give garbage: an empty row."""
    if x.ndim != 3:
        raise ValueError(f"x must be (B, L, D), got shape {tuple(x.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = real token), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's (B, L) = {tuple(x.shape[:2])}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got dtype {x.dtype}")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()  # rows with no real token
    if empty:
        raise ValueError(f"mask row {empty[0]} has no real tokens (all False); empty rows: {empty}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position per row, (B,) long.

    For right-padded masks (the Anima/Qwen convention) this equals ``mask.sum(1) - 1``; taking the last True
    position instead keeps the answer right if a caller ever passes a mask with holes.
    """
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)  # (B,)


def pool(x: torch.Tensor, mask: torch.Tensor, strategy: str, over: str = "tokens") -> torch.Tensor:
    """Pool a token sequence to one vector per prompt.

    Args:
        x: (B, L, D) float tensor, pad rows zeroed as Anima's text path does.
        mask: (B, L) bool, True = real token. Every row needs at least one True (else ValueError naming it).
        strategy: "max", "mean" or "eos" (last real token).
        over: "padded" = all L rows, as ``crossattn_emb.max(dim=1).values`` does; "tokens" = real tokens only.
            For "eos" both values give the last real token (the last padded row is a zero pad row).

    Returns:
        (B, D) tensor in x's dtype (means accumulate in float32 so bf16 inputs do not lose the small terms).
    """
    if strategy not in REDUCTIONS:
        raise ValueError(f"unknown pooling strategy {strategy!r}; choose one of {REDUCTIONS}")
    if over not in OVERS:
        raise ValueError(f"unknown pooling domain over={over!r}; choose one of {OVERS}")
    _check_inputs(x, mask)
    if strategy == "eos":
        idx = last_token_index(mask)  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), idx]  # (B, D)
    if over == "padded":
        if strategy == "max":
            return x.amax(dim=1)  # (B, D), floored at 0 wherever a zero pad row exists
        return x.float().mean(dim=1).to(x.dtype)  # (B, D), shrunk by n_tokens / L
    keep = mask.unsqueeze(-1)  # (B, L, 1)
    if strategy == "max":
        return x.masked_fill(~keep, float("-inf")).amax(dim=1)  # (B, D)
    total = (x.float() * keep).sum(dim=1)  # (B, D)
    count = keep.sum(dim=1).float()  # (B, 1)
    return (total / count).to(x.dtype)  # (B, D)


def pool_named(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """`pool` by a stable name from `STRATEGIES` (e.g. "max_padded"), (B, L, D) -> (B, D)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown pooling name {name!r}; choose one of {sorted(STRATEGIES)}")
    strategy, over = STRATEGIES[name]
    return pool(x, mask, strategy, over)


def pool_all(
    x: torch.Tensor, mask: torch.Tensor, names: tuple[str, ...] | None = None
) -> dict[str, torch.Tensor]:
    """Every strategy in `STRATEGIES` (or the given names) at once: name -> (B, D)."""
    return {name: pool_named(x, mask, name) for name in (names or tuple(STRATEGIES))}
