"""Which pooled text vector groups captions by artist, and is it the artist tag that does it?

The proposal's pooling table (KMeans NMI vs artist labels; max over crossattn_emb 0.926, EOS 0.089) with what it
lacks (`anima_probe.probes.clustering`): NMI / ARI mean and sd over KMeans seeds, a CI that refits KMeans on half-samples
of the captions, a permutation null over the same seeds (its median, 95th percentile and p), the minimum detectable
effect, Holm-adjusted p across every pooling and variant reported, and the ablation with the artist tag removed. The
caption set is checked against the model's training vocabulary first (the toy tier refuses untrained tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from anima_probe.errors import InputError, UsageError
from anima_probe.pipeline.cache import SOURCES
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.manifests import read_caption_set, repo_path
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.pipeline.vocabulary import check_prompt_set
from anima_probe.probes.clustering import HIGHER_IS_BETTER, STATS, score_clustering, strip_tags
from anima_probe.probes.directions import pooled_table
from anima_probe.probes.pooling import STRATEGIES
from anima_probe.probes.stats import holm
from anima_probe.toyworld.captions import TOYWORLD_CAPTIONS


@dataclass(frozen=True)
class PoolingNMIConfig:
    manifest: str = str(TOYWORLD_CAPTIONS.relative_to(REPO_ROOT))  # caption set (id, caption, artist)
    artist_tag_regex: str = r"@[^,]+"  # a whole comma-separated tag matching this is an artist tag
    ablation: bool = True  # also score the captions with the artist tag removed
    kmeans_seeds: int = 5
    n_init: int = 10
    n_half: int = 20  # half-samples for the CI, each refitting every seed (SE to about 16 %, 2,000 KMeans fits)
    n_perm: int = 999  # shuffles in the null: p floor 0.001, so 20 Holm-adjusted tests can fall below 0.05
    level: float = 0.95  # confidence level of the CI
    seed: int = 0


def fn(ctx: Context, config: PoolingNMIConfig) -> Result:
    rows = read_caption_set(repo_path(config.manifest))
    labels = [r.artist for r in rows]
    if len(set(labels)) < 2:
        raise InputError(f"{config.manifest}: clustering needs at least 2 artists, found {sorted(set(labels))}")
    check = check_prompt_set(ctx.anima, [(f"{config.manifest}: id {r.id}", r.caption) for r in rows],
                             f"Caption set {config.manifest}")
    variants = {"with_tag": [r.caption for r in rows]}
    if config.ablation:
        variants["no_tag"] = [strip_tags(r.caption, config.artist_tag_regex) for r in rows]
        if variants["no_tag"] == variants["with_tag"]:
            raise UsageError(f"artist_tag_regex {config.artist_tag_regex!r} matches no tag in {config.manifest}; "
                             "set it to your artist tags or pass ablation=false")
    table = pooled_table(ctx, [c for captions in variants.values() for c in captions])
    score = ctx.memoized(score_clustering)  # a warm rerun skips the KMeans fits, the bulk of this experiment's time
    seeds = tuple(range(config.seed, config.seed + config.kmeans_seeds))
    scores = {(v, key): score(table.get(key, captions), labels, seeds, n_init=config.n_init, n_perm=config.n_perm,
                              n_half=config.n_half, level=config.level, seed=config.seed)
              for v, captions in variants.items() for key in _poolings()}
    for stats, p_adj in zip(scores.values(), holm([s["p_perm"] for s in scores.values()]), strict=True):
        stats["p_holm"] = float(p_adj)
    metrics, better = {}, {}
    for (v, key), stats in scores.items():
        prefix = "" if v == "with_tag" else "no_tag/"
        for stat in STATS:
            metrics[f"{prefix}{stat}/{key}"], better[f"{prefix}{stat}/{key}"] = stats[stat], HIGHER_IS_BETTER[stat]
    note = (f"KMeans (k = {len(set(labels))}) on {len(rows)} captions; NMI/ARI mean over {len(seeds)} seeds; CI = "
            f"mean -/+ z SE, SE from {config.n_half} half-samples refitting every seed; null = {config.n_perm} label "
            f"shuffles scored against the same seeds' partitions; p_holm over the {len(scores)} tests. "
            + check.describe())
    return Result(metrics, better, tables=_tables(scores, note))


def _poolings() -> list[str]:
    return [f"{source}/{name}" for source in SOURCES for name in STRATEGIES]


def _tables(scores: dict, note: str) -> dict[str, str]:
    head = ["captions", "source", "strategy", *STATS]
    lines = [",".join(head)]
    md = [note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (v, key), stats in scores.items():
        cells = [v, *key.split("/"), *(f"{stats[s]:.4f}" for s in STATS)]
        lines.append(",".join(cells))
        md.append("| " + " | ".join(cells) + " |")
    return {"pooling_nmi.csv": "\n".join(lines) + "\n", "pooling_nmi.md": "\n".join(md) + "\n"}


EXPERIMENT = Experiment(name="pooling-nmi", version="2", config=PoolingNMIConfig, fn=fn, needs_dit=False,
                        question="Which pooling of which text embedding clusters captions by artist, beyond chance "
                                 "and beyond the artist tag itself?")
