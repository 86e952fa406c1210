"""Are the quality and resolution directions orthogonal on their own but aligned within content?

The proposal: standalone quality <> resolution cosine 0.021 ("nearly orthogonal"), mean per-content cosine
0.496 ("correlated"), and concludes resolution tags belong in p+. Both numbers are compared here with the
same null: two random neutral tag-pair directions (four distinct tags), built the same way (alone, or with
each content prompt), so "0.5" can be read against what unrelated directions give.
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
    cosine,
    direction,
    null_summary,
    plot_null,
    pooled_table,
    random_tag_sets,
    rowwise_cosines,
)

BETTER = {"cos": True, "null_q05": False, "null_q50": False, "null_q95": False, "p": False}
SCOPES = ("standalone", "per_content")


@dataclass(frozen=True)
class QualityResolutionConfig:
    poolings: tuple[str, ...] = ("crossattn_emb/max_padded",)  # "source/strategy" keys of the pooled cache
    template: str = "{tags}, {content}"  # as in quality-direction
    n_null: int = 200  # pairs of random tag directions in the null
    null_tags: int = 1  # neutral tags on each side of a null direction
    seed: int = 0


def axis_prompts(tag_sets: dict) -> dict[str, tuple[str, str]]:
    """{"quality": (q+, q-), "resolution": (r+, r-)} as captions from data/manifests/tag_sets.json."""
    return {axis: (", ".join(tag_sets[axis]["positive"]), ", ".join(tag_sets[axis]["negative"]))
            for axis in ("quality", "resolution")}


def scope_cosines(table, key: str, first: tuple[str, str], second: tuple[str, str], contents: list[str],
                  template: str) -> tuple[float, np.ndarray]:
    """cos(standalone first, standalone second) and the per-content cosines (C,) of the two directions."""
    alone = cosine(direction(table, key, *first), direction(table, key, *second))
    per = rowwise_cosines(content_directions(table, key, *first, contents, template),
                          content_directions(table, key, *second, contents, template))  # (C,)
    return alone, per


def fn(ctx: Context, config: QualityResolutionConfig) -> Result:
    sets = load_prompt_sets()
    axes = axis_prompts(sets["tag_sets"])
    contents = [c["prompt"] for c in sets["content_types"]]
    draws = random_tag_sets(sets["tag_sets"]["neutral"], config.n_null, config.null_tags, 4, config.seed)
    sides = [t for pair in axes.values() for t in pair] + [t for d in draws for t in d]
    table = pooled_table(ctx, sides + [compose(config.template, t, c) for t in sides for c in contents])
    metrics, better, panels, per_content = {}, {}, {}, {}
    for key in check_poolings(config.poolings):
        alone, per = scope_cosines(table, key, axes["quality"], axes["resolution"], contents, config.template)
        runs = [scope_cosines(table, key, d[:2], d[2:], contents, config.template) for d in draws]
        null_per = np.stack([per_d for _, per_d in runs])  # (n_null, C)
        null = {"standalone": np.array([a for a, _ in runs]), "per_content": null_per.mean(axis=1)}  # (n_null,)
        observed = {"standalone": alone, "per_content": float(per.mean())}
        for scope in SCOPES:
            stats = {"cos": observed[scope], **null_summary(observed[scope], null[scope])}
            for stat, value in stats.items():
                metrics[f"{scope}/{stat}/{key}"], better[f"{scope}/{stat}/{key}"] = value, BETTER[stat]
        panels[key], per_content[key] = (null, null_per, observed), per
    labels = [c["label"] for c in sets["content_types"]]
    return Result(metrics, better, figures={"quality_resolution": _figure(panels, per_content, labels, config)},
                  tables={"per_content_cosines.csv": _csv(per_content, labels)})


def _figure(panels: dict, per_content: dict, labels: list[str], config: QualityResolutionConfig):
    fig = new_figure(figsize=(16, 4.2 * len(panels)), layout="constrained")
    for r, (key, (null, null_per, observed)) in enumerate(panels.items()):
        for s, scope in enumerate(SCOPES):
            ax = fig.add_subplot(len(panels), 3, 3 * r + s + 1)
            what = "cosine, tags alone" if scope == "standalone" else "mean per-content cosine (8 contents)"
            plot_null(ax, null[scope], observed[scope], what)
            ax.set_title(f"quality vs resolution, {scope.replace('_', '-')}, {key}", fontsize=9)
        ax = fig.add_subplot(len(panels), 3, 3 * r + 3)
        ax.bar(range(len(labels)), per_content[key], color="tab:blue", label="quality vs resolution")
        low, high = np.quantile(null_per, [0.05, 0.95])  # over all draws and contents
        ax.axhspan(low, high, color="0.85", zorder=0, label="null single-content cosine, 5-95 %")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("cosine")
        ax.set_ylim(-1, 1)
        ax.set_title(f"per-content cosine by content, {key}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Quality <> resolution directions vs {config.n_null} pairs of random tag directions")
    return fig


def _csv(per_content: dict[str, np.ndarray], labels: list[str]) -> str:
    lines = ["pooling,content,cosine"]
    for key, values in per_content.items():
        lines += [f"{key},{label},{v:.6f}" for label, v in zip(labels, values, strict=True)]
    return "\n".join(lines) + "\n"


EXPERIMENT = Experiment(name="quality-resolution", version="1", config=QualityResolutionConfig, fn=fn,
                        needs_dit=False,
                        question="Are the quality and resolution directions orthogonal alone and correlated within "
                                 "content, compared with random tag directions?")
