"""Did the tiny Anima learn its world? Samples scored by classifiers trained on the toy data itself (never on samples).

The model is prompted with every artist x content pair; factor classifiers fitted on fresh procedural images
(a seed the model never trained on) name the artist and content of each sample, and the hand-made quality scorer
rates paired samples whose prompts differ only by the proposal's p+ / p- quality prefix. Accuracy far above chance
and p+ beating p- in (nearly) every pair is the evidence that the toy world is a fair stand-in for the real model.
The scorer's own credentials come with it (``scorer.validity``: held-out Spearman, destroyed images at the floor,
and the share of this model's samples the scorer can read). ``projection=FILE`` samples a model with its own pooled
modulation path (the positive control, ``toyworld/positive_control.py``): its base ``P(pool(prompt))`` is added on
every block, ``P(pool(""))`` on the uncond row, as the model was trained.

Run: ``anima-probe run toyworld-evidence``; the report (reports/toyworld.md) comes from
notebooks/toyworld-evidence.ipynb via ``anima-probe report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from anima_probe.errors import UsageError
from anima_probe.guidance.guided import sample_prompts
from anima_probe.pipeline.experiment import Context, Experiment, Result
from anima_probe.pipeline.figures import new_figure
from anima_probe.toyworld import positive_control as pc
from anima_probe.toyworld.classifier import chance_level, fit_factor_classifier
from anima_probe.toyworld.scorer import in_range, quality_score, validity
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS, CONTENT_TYPES, generate

P_PLUS = "absurdres, highres, masterpiece, best quality, score_7, score_8, score_9"
P_MINUS = "worst quality, low quality, score_1, score_2, score_3"


@dataclass(frozen=True)
class ToyworldEvidenceConfig:
    seed: int = 0  # noise seed of the artist x content grid; the p+/p- pairs use seed + 1
    steps: int = 20  # Euler steps (shift 3)
    cfg: float = 4.0
    size: int = 32  # pixels (the toy world is pixel space)
    classifier_images: int = 2400  # procedural images the factor classifiers are fitted on
    classifier_seed: int = 777  # a world seed the model was not trained on
    pair_every: int = 4  # every k-th grid cell becomes a p+/p- pair (96 / 4 = 24 pairs)
    artists: int = 12  # the first n artists (fewer: a quicker, coarser check)
    p_plus: str = P_PLUS  # the quality prefixes compared on paired samples
    p_minus: str = P_MINUS
    projection: str = "none"  # the model's own pooled_text_proj (positive control); none: a model without one

    def __post_init__(self):  # checked when the overrides are applied, before the model loads
        if not 2 <= self.artists <= len(ARTISTS):
            raise UsageError(f"artists={self.artists}: must be in 2..{len(ARTISTS)}")


def _grid_figure(samples: np.ndarray, rows: int, cols: int):
    fig = new_figure(figsize=(cols, rows))
    for i, img in enumerate(samples):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img)
        ax.axis("off")
    return fig


def _pairs_figure(plus: np.ndarray, minus: np.ndarray, plus_scores: np.ndarray, minus_scores: np.ndarray,
                  cols: int = 12):
    """Pairs in blocks of `cols`: a p+ row over the p- row of the same seed and prompt; titles are the scores."""
    n = len(plus)
    cols = min(cols, n)
    blocks = -(-n // cols)
    fig = new_figure(figsize=(0.8 * cols, 2.0 * blocks), layout="constrained")
    for i in range(n):
        block, col = divmod(i, cols)
        for side, (images, scores, label) in enumerate(((plus, plus_scores, "p+"), (minus, minus_scores, "p-"))):
            ax = fig.add_subplot(2 * blocks, cols, (2 * block + side) * cols + col + 1)
            ax.imshow(images[i])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{scores[i]:.1f}", fontsize=6, pad=1)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    return fig


def evidence(ctx: Context, cfg: ToyworldEvidenceConfig) -> Result:
    train = generate(cfg.classifier_images, seed=cfg.classifier_seed, size=cfg.size)
    images = np.stack([w.image for w in train])  # (N, H, W, 3)
    artist_clf = fit_factor_classifier(images, [w.artist for w in train], seed=0)
    content_clf = fit_factor_classifier(images, [w.content for w in train], seed=0)
    proj = pc.load_projection(cfg.projection, ctx.anima)
    grid = [(a, c) for a in ARTISTS[: cfg.artists] for c in CONTENT_TYPES]
    prompts = [f"score_8, {', '.join(CONTENT_TAGS[c])}, {a}" for a, c in grid]
    def rows(tc):  # the positive control's own pooled path: P(pool(row)) on each row, the uncond row P(pool(""))
        pooled = pc.pooled_input(tc.crossattn_emb, tc.t5_mask)  # (N + 1, Dt)
        return lambda uncond: pc.pooled_injection(ctx.anima, proj, pooled[-1:] if uncond else pooled[:-1])

    draw = dict(steps=cfg.steps, cfg=cfg.cfg, size=cfg.size, progress=ctx.progress,
                row_context=None if proj is None else rows)
    samples = sample_prompts(ctx.anima, prompts, cfg.seed, **draw)
    base = [f"{', '.join(CONTENT_TAGS[c])}, {a}" for a, c in grid[:: cfg.pair_every]]
    plus_images = sample_prompts(ctx.anima, [f"{cfg.p_plus}, {b}" for b in base], cfg.seed + 1, **draw)
    minus_images = sample_prompts(ctx.anima, [f"{cfg.p_minus}, {b}" for b in base], cfg.seed + 1, **draw)
    scorer_metrics, scorer_table = validity()
    plus, minus = quality_score(plus_images), quality_score(minus_images)
    metrics = {
        "accuracy/artist": artist_clf.accuracy(samples, [a for a, _ in grid]),
        "accuracy/content": content_clf.accuracy(samples, [c for _, c in grid]),
        # Constants of the grid, kept so a changed grid shows up in the gate; lower chance = a harder test.
        "chance/artist": chance_level([a for a, _ in grid]),
        "chance/content": chance_level([c for _, c in grid]),
        "quality/p_plus_mean": float(plus.mean()),
        "quality/p_minus_mean": float(minus.mean()),
        "quality/gap_mean": float((plus - minus).mean()),
        "quality/p_plus_wins": float((plus > minus).mean()),
        "scorer/samples_in_range": float(in_range(np.concatenate([samples, plus_images, minus_images])).mean()),
        **scorer_metrics,
    }
    lower = {"chance/artist", "chance/content", "quality/p_minus_mean"} | {k for k in metrics if "/ood_" in k}
    return Result(
        metrics=metrics,
        higher_is_better={k: k not in lower for k in metrics},
        figures={"grid": _grid_figure(samples, cfg.artists, len(CONTENT_TYPES)),
                 "pairs": _pairs_figure(plus_images, minus_images, plus, minus)},
        tables={"quality_pairs.csv": pd.DataFrame({"prompt": base, "score_plus": plus, "score_minus": minus}).to_csv(
                    index=False, float_format="%.6f"), "scorer_validity.csv": scorer_table},
    )


EXPERIMENT = Experiment(
    name="toyworld-evidence",
    version="2",
    question="Did the tiny Anima learn its world: are samples recognised by artist and content, and does the "
    "p+ quality prefix beat p-?",
    config=ToyworldEvidenceConfig,
    fn=evidence,
    needs_images=True,
)
