"""Is a tag difference a *direction* in pooled text space, and how would a random one look?

The proposal builds guidance directions as ``pool(p+) - pool(p-)`` and reads cosines between them ("0.814
across content types", "0.021 quality <> resolution"). A cosine alone has no scale: two directions that share
the content prompt can be aligned for reasons that have nothing to do with quality. This module holds what the
text-only direction experiments share:

- `pooled_table`: every prompt an experiment needs, pooled once through the on-disk `EmbeddingCache`
  (duplicates encoded once; a warm rerun encodes nothing);
- `direction` / `content_directions`: the differences, with one policy for the degenerate case (p+ and p-
  pooling to the same vector): `DegenerateDirection`, a ValueError that names the prompts and the pooling.
  NaN is never returned, because a cosine of a zero vector is undefined and a NaN metric would be refused by
  the run record anyway;
- `random_tag_sets`: the null, the same construction with random neutral tags in place of p+ / p-, as many per
  side as the statistic carries (`tag_count`), and `sweep_draws` for the null's level as tags per side grow;
- `mean_pairwise_ci` / `consistency_null` / `scope_cosines`: the two experiments' statistics, with a BCa
  interval over contents (the clusters) and the null built from the same function.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anima_probe.errors import InputError, UnknownNameError, UsageError
from anima_probe.pipeline.cache import SOURCES, EmbeddingCache
from anima_probe.probes.pooling import STRATEGIES
from anima_probe.probes.stats import Interval, as_numpy, cluster_bca, cosine_matrix, pairwise_cosines


class DegenerateDirection(InputError):
    """p+ and p- pool to the same vector, so their difference has no direction and no cosine."""


@dataclass(frozen=True)
class PooledTable:
    """Pooled vectors of a set of distinct prompts: ``vectors[key]`` is (N, D), row `index[prompt]`."""

    index: dict[str, int]
    vectors: dict[str, torch.Tensor]

    def get(self, key: str, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), D) float64 rows of pooling `key` ("crossattn_emb/max_padded")."""
        if key not in self.vectors:
            raise KeyError(f"no pooled vectors for {key!r}; known: {sorted(self.vectors)}")
        missing = [p for p in prompts if p not in self.index]
        if missing:
            raise KeyError(f"prompt {missing[0]!r} was not pooled ({len(missing)} missing)")
        rows = [self.index[p] for p in prompts]
        return as_numpy(self.vectors[key][rows], key)  # (n, D)


def pooled_table(ctx, prompts: Sequence[str]) -> PooledTable:
    """Pool the distinct `prompts` through the context's on-disk cache (each prompt encoded at most once)."""
    unique = list(dict.fromkeys(prompts))
    vectors = EmbeddingCache(ctx.cache_dir, ctx.anima).pooled(unique, progress=ctx.progress)
    return PooledTable({p: i for i, p in enumerate(unique)}, vectors)


def check_poolings(keys: Sequence[str]) -> tuple[str, ...]:
    """Validate "source/strategy" names, e.g. "crossattn_emb/max_padded"; the error lists the valid ones."""
    valid = [f"{s}/{name}" for s in SOURCES for name in STRATEGIES]
    bad = [k for k in keys if k not in valid]
    if bad or not keys:
        raise UnknownNameError(f"unknown pooling {bad or '(none given)'}; choose from {valid}")
    return tuple(keys)


def compose(template: str, tags: str, content: str) -> str:
    """One prompt from a template with ``{tags}`` and ``{content}``, e.g. "{tags}, {content}"."""
    if "{tags}" not in template or "{content}" not in template:
        raise UsageError(f"template {template!r} must contain both {{tags}} and {{content}}")
    return template.format(tags=tags, content=content)


def require_distinct(plus: str, minus: str) -> None:
    """The cheap half of the degenerate-direction policy, checked before anything is encoded."""
    if plus == minus:
        raise DegenerateDirection(f"p+ and p- are the same prompt {plus!r}; a direction needs two that differ")


def direction(table: PooledTable, key: str, plus: str, minus: str) -> np.ndarray:
    """pool(plus) - pool(minus), (D,); `DegenerateDirection` when the two pool to the same vector."""
    require_distinct(plus, minus)
    a, b = table.get(key, [plus, minus])  # (D,), (D,)
    diff = a - b  # (D,)
    if not np.any(diff):
        raise DegenerateDirection(f"{key}: {plus!r} and {minus!r} pool to the same vector, so pool(p+) - pool(p-)"
                                  " is zero and has no direction; use two prompts that differ")
    return diff


def content_directions(table: PooledTable, key: str, plus: str, minus: str, contents: Sequence[str],
                       template: str) -> np.ndarray:
    """One direction per content prompt: pool(template(plus, c)) - pool(template(minus, c)), (C, D)."""
    return np.stack([direction(table, key, compose(template, plus, c), compose(template, minus, c))
                     for c in contents])  # (C, D)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine of two directions (ValueError for a zero vector, as `metrics.cosine_matrix`)."""
    return float(cosine_matrix(np.stack([u, v]))[0, 1])


def rowwise_cosines(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """cos(U[i], V[i]) for each row, (n,): e.g. each content's quality direction vs its resolution direction."""
    return np.array([cosine(u, v) for u, v in zip(U, V, strict=True)])


def tag_count(prompt: str) -> int:
    """Comma-separated tags in a prompt: "a, b c, d" -> 3."""
    return len([t for t in prompt.split(",") if t.strip()])


def random_tag_sets(pool: Sequence[str], n: int, sizes: Sequence[int] = (1, 1), seed: int = 0
                    ) -> list[tuple[str, ...]]:
    """n draws of disjoint tag sets with `sizes[s]` tags on side s, joined as captions ("a, b").

    sizes=(7, 5) stands in for the proposal's p+ / p- (7 and 5 tags): a null must carry as many tags per side as
    the statistic, since more tags make the per-content directions agree more (1 tag per side gave a null median
    of 0.628, 6 tags 0.763, on the old Anima-style pool). Draws are independent (a set can repeat across draws,
    as in any Monte-Carlo null); within a draw no tag repeats.
    """
    unique = sorted(set(pool))
    if n < 1 or not sizes or min(sizes) < 1:
        raise UsageError(f"n and every size must be >= 1, got n={n}, sizes={tuple(sizes)}")
    if sum(sizes) > len(unique):
        raise UsageError(f"sides of {tuple(sizes)} distinct tags need {sum(sizes)} tags; the pool has {len(unique)}")
    rng = random.Random(seed)
    bounds = np.cumsum([0, *sizes])
    draws = []
    for _ in range(n):
        picked = rng.sample(unique, int(bounds[-1]))
        draws.append(tuple(", ".join(picked[bounds[s]:bounds[s + 1]]) for s in range(len(sizes))))
    return draws


def sweep_draws(pool: Sequence[str], n: int, tags_per_side: Sequence[int], seed: int = 0
                ) -> dict[int, list[tuple[str, ...]]]:
    """{k: n draws of k tags on each of two sides} for every k the pool can fill (2k distinct tags; the toy
    world's 12 neutral tags stop at 6). Seeded per k, so quality-direction and quality-resolution draw the same
    prompts and the second reads them from the embedding cache."""
    return {k: random_tag_sets(pool, n, (k, k), seed + k) for k in tags_per_side if 2 * k <= len(set(pool))}


def mean_pairwise_ci(directions: np.ndarray, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean pairwise cosine of the rows of `directions` (C, D) with a BCa interval over the C contents (the
    clusters). A resample that draws a content twice never pairs it with itself: that pair's cosine is 1 by
    construction, not agreement between contents."""
    C = cosine_matrix(directions)  # (C, C)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)  # (..., C) resampled content indices
        pair = C[idx[..., :, None], idx[..., None, :]]  # (..., m, m); m = C, or C - 1 in BCa's jackknife
        upper = np.triu(np.ones(pair.shape[-2:], bool), 1)  # (m, m)
        keep = upper & (idx[..., :, None] != idx[..., None, :])  # (..., m, m)
        # max(.., 1): a resample of one content repeated has no pair (chance 8 / 8^8 per resample)
        return (pair * keep).sum((-2, -1)) / np.maximum(keep.sum((-2, -1)), 1)

    return cluster_bca((np.arange(len(C)),), stat, n_boot=n_boot, seed=seed)


def plot_null(ax, null: np.ndarray, observed: float, what: str) -> None:
    """Histogram of a null distribution with the observed value and the null's 95th percentile marked."""
    ax.hist(null, bins=30, color="0.7", edgecolor="0.4", label=f"null: random tag pairs (n = {len(null)})")
    ax.axvline(float(np.quantile(null, 0.95)), color="0.2", linestyle="--", label="null 95th percentile")
    ax.axvline(observed, color="crimson", linewidth=2, label=f"observed {observed:.3f}")
    ax.set_xlabel(what)
    ax.set_ylabel("count")
    ax.legend(fontsize=7)


def mean_pairwise(directions: np.ndarray) -> tuple[float, float]:
    """(mean, min) of the n*(n-1)/2 pairwise cosines of the rows of `directions` (n, D)."""
    pairs = pairwise_cosines(directions)  # (n*(n-1)/2,)
    return float(pairs.mean()), float(pairs.min())


def consistency_null(table: PooledTable, key: str, draws: Sequence[tuple[str, str]], contents: Sequence[str],
                     template: str) -> np.ndarray:
    """Mean pairwise cosine of the per-content directions of every (side a, side b) draw, (n_draws,)."""
    return np.array([mean_pairwise(content_directions(table, key, a, b, contents, template))[0] for a, b in draws])


def scope_cosines(table: PooledTable, key: str, first: tuple[str, str], second: tuple[str, str],
                  contents: Sequence[str], template: str) -> tuple[float, np.ndarray]:
    """cos(first alone, second alone) and the per-content cosines (C,) of the two directions."""
    alone = cosine(direction(table, key, *first), direction(table, key, *second))
    per = rowwise_cosines(content_directions(table, key, *first, contents, template),
                          content_directions(table, key, *second, contents, template))  # (C,)
    return alone, per
