"""What vector does Eq. 3 give each CFG row? ``y_hat = y(p) + w * (y(p+) - y(p-))`` and the CFG-row policies.

The ports agree on Eq. 3 for the conditional row and differ on what the *unconditional* CFG row receives, which
decides whether CFG amplifies the steering (docs/modulation-guidance.md, "The two Anima ports"). Everything here is arithmetic on already projected
vectors; the projections themselves belong to the families (``families.py``).
"""

from __future__ import annotations

import enum

import torch

from anima_probe.errors import InputError


def guided_vector(base: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, w) -> torch.Tensor:
    """Eq. 3: ``y_hat = y(p) + w * (y(p+) - y(p-))``."""
    return base + w * (pos - neg)


class CFGRowPolicy(str, enum.Enum):
    """What the unconditional CFG row receives; this decides whether CFG amplifies the steering."""

    BOTH = "both"
    """Anzhc's node: the cond row's guided vector ``P(base) + w*delta`` on every row, uncond included. The
    delta cancels in ``cond - uncond``, so CFG does not amplify it."""
    COND_ONLY = "cond-only"
    """Later Forge fix: cond row ``P(p) + w*delta``; uncond row its own base ``P(cfg negative)``, no delta.
    CFG scales the delta with everything else in ``cond - uncond``."""
    OFFICIAL = "official"
    """Official Cosmos sampler: uncond row ``P("")`` (empty prompt), no delta. Same algebra as cond-only; the
    difference is the prompt behind ``base_uncond`` (see ``uncond_base_prompt``)."""
    PER_ROW_BASE = "per-row-base"
    """sorryhyun's stack (docs/modulation-guidance.md): each row its own base (uncond: the CFG negative) plus the
    same ``w*delta`` on both rows, so the delta reaches the output at about x1, not amplified by CFG."""


def row_vectors(policy: CFGRowPolicy | str, base_cond: torch.Tensor, base_uncond: torch.Tensor | None,
                delta: torch.Tensor, w) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond_vec, uncond_vec) for one block under ``policy`` (``w`` is that block's w(i))."""
    try:
        policy = CFGRowPolicy(policy)
    except ValueError:
        raise InputError(f"unknown CFG row policy {policy!r}; choose from {[p.value for p in CFGRowPolicy]}") from None
    cond = base_cond + w * delta
    if policy is CFGRowPolicy.BOTH:
        return cond, cond
    if base_uncond is None:
        raise InputError(f"CFG row policy {policy.value!r} needs base_uncond")
    if policy is CFGRowPolicy.PER_ROW_BASE:
        return cond, base_uncond + w * delta
    return cond, base_uncond


def uncond_base_prompt(policy: CFGRowPolicy | str, cfg_negative_prompt: str) -> str | None:
    """The prompt whose projection is ``base_uncond``: "" (official), the CFG negative, or None (unused: both)."""
    policy = CFGRowPolicy(policy)
    if policy is CFGRowPolicy.BOTH:
        return None
    return "" if policy is CFGRowPolicy.OFFICIAL else cfg_negative_prompt
