"""Does a pooled text vector group captions by artist beyond chance, and how sure is that?

The proposal's pooling table scores one KMeans partition per pooling against the artist labels (NMI 0.926 for max over
``crossattn_emb``) and stops there. `score_clustering` gives each pooling:

- the NMI / ARI averaged over KMeans seeds, with their sd over seeds (the fit's own spread);
- the permutation null built like the statistic: each draw shuffles the labels once and scores that shuffle against
  the same seeds' partitions, averaged the same way (`stats.permutation_null`), so null and statistic share seeds;
- a CI that refits every seed's KMeans on each of `n_half` random half-samples of the captions (the delete-half
  jackknife, `stats.half_sample_se`, which says why not a with-replacement bootstrap or BCa);
- the minimum detectable effect from the null's sd (an NMI excess over chance smaller than it could not be seen).

`strip_tags` makes the ablation (the artist tag removed from every caption). p-values are Holm-adjusted across all
the poolings and variants a run reports, by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from anima_probe.pipeline.manifests import split_tags
from anima_probe.probes.stats import (
    as_numpy,
    half_sample_se,
    kmeans_nmi,
    normal_ci,
    null_summary,
    permutation_null,
)

STATS = ("nmi", "nmi_sd", "ari", "ari_sd", "nmi_ci_low", "nmi_ci_high", "nmi_se", "null_q50", "null_q95", "p_perm",
         "p_holm", "mde")
HIGHER_IS_BETTER = {"nmi": True, "nmi_sd": False, "ari": True, "ari_sd": False, "nmi_ci_low": True,
                    "nmi_ci_high": True, "nmi_se": False, "null_q50": False, "null_q95": False, "p_perm": False,
                    "p_holm": False, "mde": False}  # fmt: skip


def strip_tags(caption: str, regex: str) -> str:
    """The caption without the comma-separated tags that fully match `regex` ("@artist" tags by default)."""
    pattern = re.compile(regex)
    return ", ".join(t for t in split_tags(caption) if not pattern.fullmatch(t))


def score_clustering(X, labels: Sequence, seeds: Sequence[int], n_init: int = 10, n_perm: int = 999,
                     n_half: int = 40, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Every statistic in `STATS` but p_holm for pooled vectors X (N, D) against artist labels (N,).

    k is the number of artists in the whole set, also on half-samples (the statistic's k, not a half's).
    """
    X, labels = as_numpy(X, "X"), np.asarray(labels)
    k = len(np.unique(labels))
    score = kmeans_nmi(X, labels, k=k, seeds=seeds, n_init=n_init)
    null = null_summary(score.nmi_mean, permutation_null(X, labels, n_perm=n_perm, seed=seed,
                                                         partitions=score.partitions))
    se = half_sample_se(lambda idx: kmeans_nmi(X[idx], labels[idx], k=k, seeds=seeds, n_init=n_init).nmi_mean,
                        len(labels), n_sub=n_half, seed=seed)
    low, high = normal_ci(score.nmi_mean, se, level, bounds=(0.0, 1.0))
    return {"nmi": score.nmi_mean, "nmi_sd": score.nmi_sd, "ari": score.ari_mean, "ari_sd": score.ari_sd,
            "nmi_ci_low": low, "nmi_ci_high": high, "nmi_se": se, "null_q50": null["null_q50"],
            "null_q95": null["null_q95"], "p_perm": null["p"], "mde": null["mde"]}
