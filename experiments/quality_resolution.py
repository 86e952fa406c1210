"""Is the resolution direction orthogonal to the quality direction alone, and aligned with it within content?

The proposal: standalone quality <> resolution cosine 0.021 ("nearly orthogonal"), mean per-content cosine 0.496
("correlated"), and concludes resolution tags belong in p+. The null keeps the quality direction (5 vs 5 tags) and
replaces the resolution direction by random neutral tags with its tag counts (2 vs 1), built the same way (alone, or
with each content prompt): it asks whether resolution is more aligned with quality than any other tag direction of its
shape. Replacing both directions would need 13 distinct neutral tags; the toy tier has 12 trained ones (its artists).
Standalone p is two-sided ("orthogonal" = inside the null), per-content p one-sided (upper), Holm over both scopes and
poolings; the per-content mean gets a BCa interval over the 8 contents, and a sweep gives the null's level at 1..7 tags
per side of the random direction, as far as the pool allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.vocabulary import checked_prompt_sets
from anima_probe.probes import directions as dr
from anima_probe.probes.stats import cluster_bca, holm, null_summary

BETTER = {"cos": True, "cos_ci_low": True, "cos_ci_high": True, "null_q05": False, "null_q50": False,
          "null_q95": False, "null_sd": False, "p": False, "p_holm": False, "mde": False}
SCOPES = ("standalone", "per_content")


@dataclass(frozen=True)
class QualityResolutionConfig:
    poolings: tuple[str, ...] = ("crossattn_emb/max_padded",)  # "source/strategy" keys of the pooled cache
    prompt_sets: str | None = None  # folder; None = the one that fits the model (anima_probe.pipeline.vocabulary)
    template: str = "{tags}, {content}"  # as in quality-direction
    n_null: int = 200  # random directions with the resolution direction's tag counts
    sweep: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)  # tags per side of the sweep's random directions
    n_sweep: int = 30  # draws per sweep point (the same prompts as quality-direction's sweep)
    n_boot: int = 2000
    seed: int = 0


def axis_prompts(tag_sets: dict) -> dict[str, tuple[str, str]]:
    """{"quality": (q+, q-), "resolution": (r+, r-)} as captions from the prompt set's tag_sets.json."""
    return {axis: (", ".join(tag_sets[axis]["positive"]), ", ".join(tag_sets[axis]["negative"]))
            for axis in ("quality", "resolution")}


def _nulls(table, key, quality, draws, contents, template) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Null values per scope (n,) for random second directions, and their per-content cosines (n, C)."""
    runs = [dr.scope_cosines(table, key, quality, d, contents, template) for d in draws]
    per = np.stack([p for _, p in runs])  # (n, C)
    return {"standalone": np.array([a for a, _ in runs]), "per_content": per.mean(axis=1)}, per


def _score(table, key: str, axes: dict, nulls: dict, contents: list[str], config: QualityResolutionConfig):
    """One pooling: stats per scope, the per-content cosines (C,), and its null.csv and sweep.csv rows. `nulls`
    maps (tags+, tags-) to draws, the matched counts first."""
    alone, per = dr.scope_cosines(table, key, axes["quality"], axes["resolution"], contents, config.template)
    ci = cluster_bca((per,), lambda x, axis=-1: x.mean(axis), n_boot=config.n_boot, seed=config.seed)
    by_size = {tags: _nulls(table, key, axes["quality"], draws, contents, config.template)
               for tags, draws in nulls.items()}
    (null, null_per), observed = next(iter(by_size.values())), {"standalone": alone, "per_content": ci.value}
    stats = {"standalone": {"cos": alone, **null_summary(alone, null["standalone"], two_sided=True)},
             "per_content": {"cos": ci.value, "cos_ci_low": ci.low, "cos_ci_high": ci.high,
                             **null_summary(ci.value, null["per_content"])}}
    rows = [f"{key},{s},{i},{v:.6f}" for s in SCOPES for i, v in enumerate(null[s])]
    rows += [f"{key},single_content,{i},{v:.6f}" for i, v in enumerate(null_per.ravel())]
    curve = [f"{key},{s},{a},{b}," + ",".join(f"{q:.6f}" for q in np.quantile(n[s], [0.05, 0.5, 0.95]))
             + f",{observed[s]:.6f}" for (a, b), (n, _) in by_size.items() for s in SCOPES]
    return stats, per, rows, curve


def fn(ctx: Context, config: QualityResolutionConfig) -> Result:
    sets, check = checked_prompt_sets(ctx.anima, config.prompt_sets)
    axes = axis_prompts(sets["tag_sets"])
    contents, pool = [c["prompt"] for c in sets["content_types"]], sets["tag_sets"]["neutral"]
    sizes = tuple(dr.tag_count(t) for t in axes["resolution"])
    nulls = {sizes: dr.random_tag_sets(pool, config.n_null, sizes, config.seed)}
    nulls |= {(k, k): d for k, d in dr.sweep_draws(pool, config.n_sweep, config.sweep, config.seed).items()
              if (k, k) != sizes}  # the matched null stays the one with n_null draws
    sides = [t for pair in axes.values() for t in pair] + [t for ds in nulls.values() for d in ds for t in d]
    table = dr.pooled_table(ctx, sides + [dr.compose(config.template, t, c) for t in sides for c in contents])
    stats, per_content, null_rows, curve = {}, {}, [], []
    for key in dr.check_poolings(config.poolings):
        by_scope, per_content[key], rows, points = _score(table, key, axes, nulls, contents, config)
        stats |= {(scope, key): v for scope, v in by_scope.items()}
        null_rows, curve = null_rows + rows, curve + points
    for sk, p_adj in zip(stats, holm([s["p"] for s in stats.values()]), strict=True):
        stats[sk]["p_holm"] = float(p_adj)
    metrics = {f"{scope}/{s}/{key}": v for (scope, key), by in stats.items() for s, v in by.items()}
    labels = [c["label"] for c in sets["content_types"]]
    note = (f"Null: the quality direction against {config.n_null} random neutral directions with "
            f"{sizes[0]} and {sizes[1]} tags per side (as the resolution direction), seed {config.seed}; CI: BCa "
            f"over the {len(contents)} contents. " + check.describe())
    return Result(metrics, {k: BETTER[k.split("/")[1]] for k in metrics}, tables={
        "per_content_cosines.csv": "pooling,content,cosine\n" + "".join(
            f"{key},{label},{v:.6f}\n" for key, values in per_content.items()
            for label, v in zip(labels, values, strict=True)),
        "null.csv": "pooling,scope,draw,cosine\n" + "\n".join(null_rows) + "\n",
        "sweep.csv": "pooling,scope,tags_plus,tags_minus,null_q05,null_q50,null_q95,observed\n" + "\n".join(curve)
        + "\n", "summary.md": note + "\n"})


EXPERIMENT = Experiment(name="quality-resolution", version="2", config=QualityResolutionConfig, fn=fn,
                        needs_dit=False,
                        question="Is the resolution direction orthogonal to the quality direction alone and aligned "
                                 "within content, compared with random tag directions of its shape?")
