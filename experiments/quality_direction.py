"""Does one quality direction hold across content, more than random tag directions built the same way would?

The proposal: pool(content + p+) - pool(content + p-) over 8 content types has mean pairwise cosine 0.814 (min 0.770),
so one global direction suffices. Shared content makes any two such differences look alike, and more tags per side make
them agree more (a 1-tag null is easier to beat than a 7-tag statistic), so the null is the same construction with
random neutral tags, as many per side as p+ and p- carry (7 and 5), drawn from the prompt set's neutral pool: for the
toy tier tags the model trained on (its 12 artist tags), for the anima tier Anima-style general tags. The observed mean
gets a BCa interval over the 8 contents (approximate with 8 clusters); the null its quantiles, p (Holm over poolings)
and the minimum detectable effect; a sweep gives the null's level at 1..7 tags per side, as far as the pool allows.
Default pooling: the proposal's (max over crossattn_emb, padded rows included); others by `poolings=`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.vocabulary import check_prompt_set, checked_prompt_sets
from anima_probe.probes import directions as dr
from anima_probe.probes.stats import cosine_matrix, holm, null_summary

BETTER = {"cos_mean": True, "cos_ci_low": True, "cos_ci_high": True, "cos_min": True, "null_q05": False,
          "null_q50": False, "null_q95": False, "null_sd": False, "p": False, "p_holm": False, "mde": False}


@dataclass(frozen=True)
class QualityDirectionConfig:
    poolings: tuple[str, ...] = ("crossattn_emb/max_padded",)  # "source/strategy" keys of the pooled cache
    prompt_sets: str | None = None  # folder; None = the one that fits the model (anima_probe.pipeline.vocabulary)
    positive: str | None = None  # p+; None = the proposal's (data/manifests/guidance_prompts.json)
    negative: str | None = None  # p-; None = the proposal's
    template: str = "{tags}, {content}"  # quality tags first, as Anima captions put them
    n_null: int = 200  # random tag draws in the null, with p+'s and p-'s tag counts per side
    sweep: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)  # tags per side of the sweep's nulls
    n_sweep: int = 30  # draws per sweep point (a figure, not a test; 2,880 prompts on the toy tier)
    n_boot: int = 2000
    seed: int = 0


def _score(table, key: str, plus: str, minus: str, nulls: dict, contents: list[str], config: QualityDirectionConfig):
    """One pooling: its stats, the cosine matrix of its 8 directions, and its null.csv and sweep.csv rows.
    `nulls` maps (tags+, tags-) to draws, the matched counts first."""
    dirs = dr.content_directions(table, key, plus, minus, contents, config.template)  # (8, D)
    ci = dr.mean_pairwise_ci(dirs, n_boot=config.n_boot, seed=config.seed)
    by_size = {tags: dr.consistency_null(table, key, draws, contents, config.template) for tags, draws in nulls.items()}
    null = next(iter(by_size.values()))  # (n_null,), the matched null
    stats = {"cos_mean": ci.value, "cos_ci_low": ci.low, "cos_ci_high": ci.high, "cos_min": dr.mean_pairwise(dirs)[1],
             **null_summary(ci.value, null)}
    curve = [f"{key},{a},{b}," + ",".join(f"{q:.6f}" for q in np.quantile(n, [0.05, 0.5, 0.95])) + f",{ci.value:.6f}"
             for (a, b), n in by_size.items()]
    return stats, cosine_matrix(dirs), [f"{key},{i},{v:.6f}" for i, v in enumerate(null)], curve


def fn(ctx: Context, config: QualityDirectionConfig) -> Result:
    sets, check = checked_prompt_sets(ctx.anima, config.prompt_sets)
    plus = sets["guidance"]["positive"] if config.positive is None else config.positive
    minus = sets["guidance"]["negative"] if config.negative is None else config.negative
    dr.require_distinct(plus, minus)
    check_prompt_set(ctx.anima, [("positive=", plus), ("negative=", minus)])  # overrides are prompts too
    contents, pool = [c["prompt"] for c in sets["content_types"]], sets["tag_sets"]["neutral"]
    sizes = (dr.tag_count(plus), dr.tag_count(minus))
    nulls = {sizes: dr.random_tag_sets(pool, config.n_null, sizes, config.seed)}
    nulls |= {(k, k): d for k, d in dr.sweep_draws(pool, config.n_sweep, config.sweep, config.seed).items()
              if (k, k) != sizes}  # the matched null stays the one with n_null draws
    sides = [plus, minus] + [t for ds in nulls.values() for d in ds for t in d]
    table = dr.pooled_table(ctx, [dr.compose(config.template, t, c) for t in sides for c in contents])
    stats, matrices, null_rows, curve = {}, {}, [], []
    for key in dr.check_poolings(config.poolings):
        stats[key], matrices[key], rows, points = _score(table, key, plus, minus, nulls, contents, config)
        null_rows, curve = null_rows + rows, curve + points
    for key, p_adj in zip(stats, holm([s["p"] for s in stats.values()]), strict=True):
        stats[key]["p_holm"] = float(p_adj)
    metrics = {f"{s}/{key}": v for key, by in stats.items() for s, v in by.items()}
    labels = [c["label"] for c in sets["content_types"]]
    note = (f"Null: {config.n_null} draws of random neutral tags, {sizes[0]} and {sizes[1]} per side (as p+ / p-), "
            f"seed {config.seed}; CI: BCa over the {len(contents)} contents. " + check.describe())
    return Result(metrics, {k: BETTER[k.split("/")[0]] for k in metrics}, tables={
        "pairwise_cosines.csv": _csv(matrices, labels), "summary.md": _summary(stats, note),
        "null.csv": "pooling,draw,mean_cosine\n" + "\n".join(null_rows) + "\n",
        "sweep.csv": "pooling,tags_plus,tags_minus,null_q05,null_q50,null_q95,observed\n" + "\n".join(curve) + "\n"})


def _csv(matrices: dict[str, np.ndarray], labels: list[str]) -> str:
    lines = ["pooling,content_a,content_b,cosine"]
    for key, C in matrices.items():
        i, j = np.triu_indices(len(C), 1)
        lines += [f"{key},{labels[a]},{labels[b]},{C[a, b]:.6f}" for a, b in zip(i, j, strict=True)]
    return "\n".join(lines) + "\n"


def _summary(stats: dict[str, dict[str, float]], note: str) -> str:
    head = "| pooling | " + " | ".join(BETTER) + " |"
    rows = [f"| {key} | " + " | ".join(f"{by[s]:.4f}" for s in BETTER) + " |" for key, by in stats.items()]
    return "\n".join([head, "|---|" + "---|" * len(BETTER), *rows, "", note]) + "\n"


EXPERIMENT = Experiment(name="quality-direction", version="2", config=QualityDirectionConfig, fn=fn,
                        needs_dit=False,
                        question="Is the p+/p- quality direction the same across content types, beyond what random "
                                 "tag directions with as many tags per side, sharing the content, give?")
