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
- `random_tag_sets`: the null, the same construction with random neutral tags in place of p+ / p-;
- `null_summary`: the null's quantiles and the empirical p of an observed value.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anima_probe.errors import InputError
from anima_probe.pipeline.cache import SOURCES, EmbeddingCache
from anima_probe.probes.pooling import STRATEGIES
from anima_probe.probes.stats import as_numpy, cosine_matrix, empirical_p, null_quantiles

NULL_QUANTILES = (0.05, 0.5, 0.95)


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
        raise ValueError(f"unknown pooling {bad or '(none given)'}; choose from {valid}")
    return tuple(keys)


def compose(template: str, tags: str, content: str) -> str:
    """One prompt from a template with ``{tags}`` and ``{content}``, e.g. "{tags}, {content}"."""
    if "{tags}" not in template or "{content}" not in template:
        raise ValueError(f"template {template!r} must contain both {{tags}} and {{content}}")
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


def random_tag_sets(pool: Sequence[str], n: int, size: int = 1, sides: int = 2, seed: int = 0
                    ) -> list[tuple[str, ...]]:
    """n draws of `sides` disjoint sets of `size` tags each, joined as captions ("a, b").

    sides=2 gives the (p+, p-) stand-ins of one random direction; sides=4 gives two random directions with no
    tag in common, so their cosine is not inflated by a shared tag. Draws are independent (a pair can repeat
    across draws, as in any Monte-Carlo null); within a draw no tag repeats.
    """
    unique = sorted(set(pool))
    if size < 1 or sides < 1 or n < 1:
        raise ValueError(f"n, size and sides must be >= 1, got n={n}, size={size}, sides={sides}")
    if size * sides > len(unique):
        raise ValueError(f"{sides} sets of {size} distinct tags need {size * sides} tags; the pool has {len(unique)}")
    rng = random.Random(seed)
    draws = []
    for _ in range(n):
        picked = rng.sample(unique, size * sides)
        draws.append(tuple(", ".join(picked[s * size:(s + 1) * size]) for s in range(sides)))
    return draws


def null_summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """{"null_q05", "null_q50", "null_q95", "p"}: where `observed` sits in the null (one-sided, upper tail)."""
    out = {f"null_q{round(q * 100):02d}": v for q, v in null_quantiles(null, NULL_QUANTILES).items()}
    out["p"] = empirical_p(observed, null, higher_is_extreme=True)
    return out


def plot_null(ax, null: np.ndarray, observed: float, what: str) -> None:
    """Histogram of a null distribution with the observed value and the null's 95th percentile marked."""
    ax.hist(null, bins=30, color="0.7", edgecolor="0.4", label=f"null: random tag pairs (n = {len(null)})")
    ax.axvline(float(np.quantile(null, 0.95)), color="0.2", linestyle="--", label="null 95th percentile")
    ax.axvline(observed, color="crimson", linewidth=2, label=f"observed {observed:.3f}")
    ax.set_xlabel(what)
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
