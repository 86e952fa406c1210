"""Does one quality direction hold across content, more than a random tag direction would?

The proposal: pool(content + p+) - pool(content + p-) over 8 content types has mean pairwise cosine 0.814
(min 0.770), so one global direction suffices. Shared content makes any two such differences look alike,
so the same construction with random neutral tag pairs in place of p+ / p- gives the null that says what
"0.8" means here: its quantiles and the empirical p of the observed mean. Default pooling: the proposal's
(max over crossattn_emb, padded rows included); others by `poolings=`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.figures import new_figure
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.probes.directions import (
    check_poolings,
    compose,
    content_directions,
    null_summary,
    plot_null,
    pooled_table,
    random_tag_sets,
    require_distinct,
)
from anima_probe.probes.stats import cosine_matrix, pairwise_cosines

BETTER = {"cos_mean": True, "cos_min": True, "null_q05": False, "null_q50": False, "null_q95": False, "p": False}


@dataclass(frozen=True)
class QualityDirectionConfig:
    poolings: tuple[str, ...] = ("crossattn_emb/max_padded",)  # "source/strategy" keys of the pooled cache
    positive: str | None = None  # p+; None = the proposal's (data/manifests/guidance_prompts.json)
    negative: str | None = None  # p-; None = the proposal's
    template: str = "{tags}, {content}"  # quality tags first, as Anima captions put them
    n_null: int = 200  # random tag pairs in the null
    null_tags: int = 1  # neutral tags on each side of a null pair
    seed: int = 0


def mean_pairwise(directions: np.ndarray) -> tuple[float, float]:
    """(mean, min) of the n*(n-1)/2 pairwise cosines of the rows of `directions` (n, D)."""
    pairs = pairwise_cosines(directions)  # (n*(n-1)/2,)
    return float(pairs.mean()), float(pairs.min())


def fn(ctx: Context, config: QualityDirectionConfig) -> Result:
    sets = load_prompt_sets()
    plus = sets["guidance"]["positive"] if config.positive is None else config.positive
    minus = sets["guidance"]["negative"] if config.negative is None else config.negative
    require_distinct(plus, minus)
    contents = [c["prompt"] for c in sets["content_types"]]
    draws = random_tag_sets(sets["tag_sets"]["neutral"], config.n_null, config.null_tags, 2, config.seed)
    sides = [plus, minus] + [t for pair in draws for t in pair]
    table = pooled_table(ctx, [compose(config.template, t, c) for t in sides for c in contents])
    metrics, better, matrices, nulls = {}, {}, {}, {}
    for key in check_poolings(config.poolings):
        dirs = content_directions(table, key, plus, minus, contents, config.template)  # (8, D)
        cos_mean, cos_min = mean_pairwise(dirs)
        null = np.array([mean_pairwise(content_directions(table, key, a, b, contents, config.template))[0]
                         for a, b in draws])  # (n_null,)
        stats = {"cos_mean": cos_mean, "cos_min": cos_min, **null_summary(cos_mean, null)}
        for stat, value in stats.items():
            metrics[f"{stat}/{key}"], better[f"{stat}/{key}"] = value, BETTER[stat]
        matrices[key], nulls[key] = cosine_matrix(dirs), (null, cos_mean)
    labels = [c["label"] for c in sets["content_types"]]
    return Result(metrics, better, figures={"cosine_heatmap": _heatmaps(matrices, labels),
                                            "null": _null_figure(nulls, config)},
                  tables={"pairwise_cosines.csv": _csv(matrices, labels), "summary.md": _summary(metrics, config)})


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols) of a panel grid at most two panels wide."""
    return (n + 1) // 2, min(n, 2)


def _heatmaps(matrices: dict[str, np.ndarray], labels: list[str]):
    rows, cols = _grid(len(matrices))
    fig = new_figure(figsize=(6.2 * cols, 5.6 * rows), layout="constrained")
    for i, (key, C) in enumerate(matrices.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r")
        for r in range(len(C)):
            for c in range(len(C)):
                ax.text(c, r, f"{C[r, c]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(C[r, c]) > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        upper = C[np.triu_indices(len(C), 1)]
        ax.set_title(f"quality direction per content, {key}\nmean {upper.mean():.3f}, min {upper.min():.3f}",
                     fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine")
    return fig


def _null_figure(nulls: dict[str, tuple[np.ndarray, float]], config: QualityDirectionConfig):
    rows, cols = _grid(len(nulls))
    fig = new_figure(figsize=(6 * cols, 3.8 * rows), layout="constrained")
    for i, (key, (null, observed)) in enumerate(nulls.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_null(ax, null, observed, "mean pairwise cosine over the 8 content types")
        ax.set_title(f"p+/p- vs random tag pairs ({config.null_tags} tag per side), {key}", fontsize=9)
    return fig


def _csv(matrices: dict[str, np.ndarray], labels: list[str]) -> str:
    lines = ["pooling,content_a,content_b,cosine"]
    for key, C in matrices.items():
        i, j = np.triu_indices(len(C), 1)
        lines += [f"{key},{labels[a]},{labels[b]},{C[a, b]:.6f}" for a, b in zip(i, j, strict=True)]
    return "\n".join(lines) + "\n"


def _summary(metrics: dict[str, float], config: QualityDirectionConfig) -> str:
    head = "| pooling | cos mean | cos min | null q05 | null q50 | null q95 | p (mean >= null) |"
    rows = [f"| {key} | " + " | ".join(f"{metrics[f'{s}/{key}']:.4f}" for s in BETTER) + " |"
            for key in config.poolings]
    note = f"Null: {config.n_null} random neutral tag pairs, {config.null_tags} tag(s) per side, seed {config.seed}."
    return "\n".join([head, "|---|---|---|---|---|---|---|", *rows, "", note]) + "\n"


EXPERIMENT = Experiment(name="quality-direction", version="1", config=QualityDirectionConfig, fn=fn,
                        needs_dit=False,
                        question="Is the p+/p- quality direction the same across content types, beyond what "
                                 "random tag directions sharing the content give?")
