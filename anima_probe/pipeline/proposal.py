"""What did the proposal claim, number by number, so every report can set its run beside the claim?

Transcribed from the public proposal, HF discussion #122 of circlestone-labs/Anima (docs/proposal.md, "The claims,
number by number", with its URL): real Anima weights, 1,416 images of 37 artists for the pooling table, 8 content
types for the directions. A run on the toy world is not expected to reproduce these values (another model, another
caption set); the reports show them side by side so the reader compares like with like on the real weights.
"""

from __future__ import annotations

SOURCE = "proposal (HF discussion #122), real Anima weights"

# KMeans NMI against artist labels, 1,416 images, 37 artists; our key "source/strategy".
POOLING_NMI = {
    "crossattn_emb/max_padded": 0.926,  # "Max pool crossattn_emb (post-LLMAdapter)"
    "crossattn_emb/mean_padded": 0.551,  # "Mean pool crossattn_emb"; padded vs tokens is not stated
    "prompt_embeds/mean_padded": 0.400,  # "Mean pool prompt_embeds (pre-LLMAdapter)"
    "prompt_embeds/eos": 0.170,
    "crossattn_emb/eos": 0.089,
}

QUALITY_DIRECTION = {"cos_mean": 0.814, "cos_min": 0.770}  # 28 pairwise cosines over 8 content types

QUALITY_RESOLUTION = {"standalone": 0.021, "per_content": 0.496}

# Velocity ("noise prediction") MSE at alpha 2 and 8 and the growth factor alpha 4 -> 8, per injection point.
INJECTION_MSE = {
    "before_norm": {"alpha_2": 4.77e-4, "alpha_8": 1.08e-2, "growth_4_to_8": 6.1},
    "after_norm": {"alpha_2": 4.76e-3, "alpha_8": 1.89e-1, "growth_4_to_8": 7.2},
    "adaln_lora": {"alpha_2": 4.29e-3, "alpha_8": 4.06e-2, "growth_4_to_8": 2.6},
}


def claim_table(rows: list[tuple[str, float | None, float | None]], digits: int = 3, model: str = "this run") -> str:
    """Markdown table ``| quantity | proposal | <model> |`` from (label, claimed, observed) rows; None shows "-"."""

    def cell(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x:.{digits}g}" if abs(x) < 10 ** -digits and x != 0 else f"{x:.{digits}f}"

    lines = [f"| quantity | proposal | {model} |", "|---|---|---|"]
    lines += [f"| {label} | {cell(claimed)} | {cell(observed)} |" for label, claimed, observed in rows]
    return "\n".join(lines)


def evidence_table(rows: list[dict], model: str = "this run", digits: int = 3) -> str:
    """The headline form every probe report uses: ``| quantity | proposal | <model> | CI | null median | null q95 |
    p | MDE |`` from dicts with keys label, proposal (or None), value, ci (low, high) or None, null_q50, null_q95,
    p (Holm-adjusted where several are tested) and mde (2.49 x the null's SE: an excess over the null smaller than it
    could not have been seen)."""

    def cell(x) -> str:
        if x is None:
            return "-"
        if isinstance(x, tuple):
            return f"{cell(x[0])} .. {cell(x[1])}"
        return f"{x:.{digits}g}" if abs(x) < 10 ** -digits and x != 0 else f"{x:.{digits}f}"

    lines = [f"| quantity | proposal | {model} | 95 % CI | null median | null q95 | p | MDE |", "|---|" + "---|" * 7]
    lines += [f"| {r['label']} | " + " | ".join(cell(r.get(k)) for k in ("proposal", "value", "ci", "null_q50",
                                                                          "null_q95", "p", "mde")) + " |" for r in rows]
    return "\n".join(lines)
