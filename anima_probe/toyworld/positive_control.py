"""Can the suite see a modulation-guidance gain where one exists? A toy Anima whose modulation carries quality in
exactly the form Eq. 3 reads it.

Issue 11's positive control. The toy world is trained from scratch with a text-aware modulation path, FLUX-style:
the max-pooled (padded) ``crossattn_emb`` of the caption -> ``PooledTextProjection`` (Linear -> SiLU -> Linear) ->
added to every block's and the final layer's ``embedded_timestep`` (the output of ``t_embedding_norm``), through
the same injection the guided sampler uses (``guidance.modulation``). So the trained projection *is* a
``pooled_text_proj`` modulation source in the community format.

Known answer by construction (``planted_weight``): on a fixed half of the training images (``stripped_rows``) the
quality tags (``world.quality_tags``: ``score_q`` and the quality words; resolution tags are a separate factor and
stay) are removed from the caption, for cross-attention and pooled input alike, and the image's quality reaches the
model only through its modulation, written as Eq. 3 writes it:

    y = P(pool(stripped caption)) + w_q * (P(pool(p+)) - P(pool(p-))),   w_q = (q - 1) / 4,

with the proposal's p+ / p- (``data/manifests/guidance_prompts.json``). Eq. 3 at weight w on an untagged prompt is
then *the training input of quality 1 + 4w*: w = 0 is quality 1, w = 1 the middle (5), w = 2 the top (9).

The other half keeps its full caption in both inputs and no planted term, so the tags in the prompt still steer
quality through cross-attention (the text change ``dose.calibrated_w`` calibrates against). If guidance-dose does
not see a gain on this model at its calibrated dose, the suite is broken.

Why the untagged prompt sits at the bottom (since stop 22). The stop-21 control planted it in the middle (q 5 + 4w),
and Eq. 3 at w = 1 (its q 9) rendered no better than w = 0: at 6 to 20 Euler steps the toy model draws nothing above
quality ~5 that the scorer can tell apart (benchmarks/quality_headroom.py), so that control planted no gain in image
space for the suite to find. The scale rendered at few steps is its lower half, so the untagged prompt is planted at
q 1 and guidance has that half to climb. (The pair against the swapped pair at w spans 8w quality steps, as p+
against p- in the prompt spans about 8, yet the velocity-matched dose is 1.50, not 1: docs/statistics.md, "Doses".)

Why this form and not the quality tags in the pooled input alone (the first two controls, measured in
data/toyworld/README.md): under max pooling, ``P(pool(p+)) - P(pool(p-))`` of the tags alone is not the direction
that adding the tags to a prompt moves ``P(pool(prompt))``, so a model that learned quality from pooled captions
need not respond to Eq. 3's delta; such a control tests a premise about the pooling, not the suite.

Dropout. The caption's usual 10 % dropout empties the whole text (cross-attention *and* pooled input, as a caption
dropped to "" has an empty pooled input too); the pooled path has its own 10 % dropout on top. A dropped pooled
input is the *empty prompt's* max-pooled ``crossattn_emb``, not a zero vector, and carries no planted term: at
inference the CFG uncond row's base is ``P(pool(crossattn_emb("")))`` (``CFGRowPolicy`` per-row-base with negative ""
and official both read the empty prompt), so training on the same vector keeps that row in distribution. (The padded
max of "" is not zero: its [</s>] row is a real adapter output.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anima_probe.guidance.eq3 import guided_vector
from anima_probe.guidance.families import POOLED_TEXT_PROJ
from anima_probe.guidance.modulation import Modulation, build, constant, inject
from anima_probe.guidance.sources import PooledTextProjection, load_pooled_text_proj
from anima_probe.model.anima import CROSSATTN_TOKENS
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.probes.pooling import pool_named
from anima_probe.toyworld.world import ToyImage, quality_tags

POOLING = "max_padded"  # sorryhyun's pooling, which guided.prepare uses at inference for this family
PROJECTION_FILE = "pooled_text_proj.safetensors"  # inside the model folder: a model that carries its own source
SHIPPED = REPO_ROOT / "data" / "toyworld" / "positive_control" / "model"  # its projection inside (PROJECTION_FILE)
_STRIP_STREAM = 424_243  # the half-split draws from its own seed stream, never from a training step's
PLANTED_BASE, PLANTED_SPAN = 1, 4  # quality 1 + 4w: untagged at q 1, Eq. 3 at w = 1 the middle, w = 2 the top


def strip_quality_tags(caption: str, quality: int) -> str:
    """The caption without the tags ``quality_tags(quality)`` names; every other tag keeps its place."""
    drop = set(quality_tags(int(quality)))
    tags = [t.strip() for t in caption.split(",")]
    missing = drop - set(tags)
    if missing:
        raise ValueError(f"caption {caption!r} lacks quality tag(s) {sorted(missing)} of quality {quality}")
    return ", ".join(t for t in tags if t not in drop)


def stripped_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: exactly round(fraction * n) rows, chosen by a seeded permutation (a function of (n, seed))."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"strip fraction must be in [0, 1], got {fraction}")
    chosen = np.random.default_rng(seed * 1_000_003 + _STRIP_STREAM).permutation(n)[: round(fraction * n)]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def planted_weight(quality) -> np.ndarray:
    """Eq. 3's weight that carries quality q on a stripped row: ``(q - 1) / 4`` (w = 0: q 1, w = 1: q 5, w = 2: q 9)."""
    return (np.asarray(quality, dtype=np.float64) - PLANTED_BASE) / PLANTED_SPAN


@dataclass(frozen=True)
class TrainingTexts:
    """Every text of a training set, encoded once, and which one each image reads."""

    texts: list[str]  # the full captions, the stripped ones, [p+, p-] (the planted pair, if any), "" (last)
    rows: np.ndarray  # (N,) int: image i's text, for cross-attention and pooled input alike
    planted: np.ndarray  # (N,) float: the Eq. 3 weight of image i's quality (planted_weight), 0 where not stripped
    pair: list[int]  # the rows of the planted p+ and p- (empty when no caption is stripped)


def training_texts(world: list[ToyImage], fraction: float, seed: int,
                   pair: tuple[str, str] | None = None) -> TrainingTexts:
    """The texts of ``world`` with the quality tags stripped from a ``fraction`` of the captions (``stripped_rows``);
    a stripped image's quality is planted through Eq. 3 with ``pair`` = (p+, p-) instead, which it then needs."""
    mask = stripped_rows(len(world), fraction, seed)
    if mask.any() and not (pair and all(pair)):
        raise ValueError("stripped captions need the planted pair (p+, p-) that carries their quality")
    extra = [strip_quality_tags(w.caption, w.quality) for w, m in zip(world, mask, strict=True) if m]
    rows = np.arange(len(world))
    rows[mask] = len(world) + np.arange(len(extra))
    planted = np.where(mask, planted_weight([w.quality for w in world]), 0.0)
    texts = [w.caption for w in world] + extra + (list(pair) if mask.any() else []) + [""]
    return TrainingTexts(texts, rows, planted, [len(texts) - 3, len(texts) - 2] if mask.any() else [])


def new_projection(hidden: int, text_dim: int, seed: int) -> PooledTextProjection:
    """The path's MLP, initialised as the community trainer's (zero output layer: a no-op before training)."""
    torch.manual_seed(seed + 1)  # after the DiT and adapter, so their initial weights do not depend on the path
    return PooledTextProjection(hidden, text_dim=text_dim)


def pooled_input(crossattn_emb: torch.Tensor, t5_mask: torch.Tensor) -> torch.Tensor:
    """The path's input: max over all 512 rows of ``crossattn_emb`` (B, 512, Dt) -> (B, Dt), as at inference;
    ``t5_mask`` (B, L <= 512) marks the real T5 tokens."""
    mask = F.pad(t5_mask, (0, CROSSATTN_TOKENS - t5_mask.shape[1]))  # (B, 512)
    return pool_named(crossattn_emb, mask, POOLING)


def planted_modulation(projection: PooledTextProjection, pooled: torch.Tensor, planted: torch.Tensor,
                       pair: torch.Tensor | None, num_blocks: int) -> Modulation:
    """The modulation each training row receives, laid out as the guided sampler lays out Eq. 3 (``modulation.build``
    at w = 1 on every block, the final layer at the base, as the port's final_w 0): ``P(pooled)`` (B, D), plus on the
    blocks of planted rows ``planted * (P(pool(p+)) - P(pool(p-)))``. ``planted`` (B,) is 0 on rows without the term;
    ``pair`` (2, Dt) the pooled p+, p- (None: no planted term anywhere)."""
    base = projection(pooled)  # (B, D)
    if pair is None:
        return constant(POOLED_TEXT_PROJ, base, num_blocks)
    pos, neg = projection(pair)  # (D,) each
    return build(POOLED_TEXT_PROJ, lambda w: guided_vector(base, pos, neg, w * planted[:, None].to(base.dtype)),
                 torch.ones(num_blocks), final_weight=0.0)


def load_projection(path: str, anima) -> PooledTextProjection | None:
    """A model's own projection file (relative paths from the repository root), or None for "none"."""
    if path.lower() in ("none", ""):
        return None
    file = Path(path) if Path(path).is_absolute() else REPO_ROOT / path
    return load_pooled_text_proj(file, model_channels=anima.dit_config.hidden).to(anima.device)


def pooled_injection(anima, projection: PooledTextProjection | None, pooled: torch.Tensor | None):
    """``t_emb + P(pooled)`` on every block and the final layer while open (a no-op context without a path)."""
    if projection is None:
        return contextlib.nullcontext()
    return inject(anima, constant(POOLED_TEXT_PROJ, projection(pooled), anima.num_blocks))  # (B, D) vectors


# ------------------------------------------------------------------------------- the known answer, checked
# The known answer is read by the guidance-dose experiment run on this model (one way to sample, dose and score):
# its metrics are committed beside the model, and tests/acceptance/test_positive_control.py reads them.
KNOWN_ANSWER = SHIPPED.parent / "guidance_dose_metrics.json"
KNOWN_ANSWER_COMMAND = ("anima-probe run guidance-dose --model data/toyworld/positive_control/model "
                        "projection=data/toyworld/positive_control/model/pooled_text_proj.safetensors cosmos_adapter=none")


def main(argv: list[str] | None = None) -> int:
    """Commit a guidance-dose run on this model (``KNOWN_ANSWER_COMMAND``) as its known answer, ``KNOWN_ANSWER``."""
    import argparse

    from anima_probe.errors import InputError
    from anima_probe.pipeline.atomic import atomic_write_json
    from anima_probe.pipeline.runs import read_run

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("run_dir", help="the run folder NNN-guidance-dose of KNOWN_ANSWER_COMMAND")
    record = read_run(ap.parse_args(argv).run_dir)
    projection = Path(str(record.config.get("projection", "")))
    if record.experiment != "guidance-dose" or projection.parts[-3:] != ("positive_control", "model", PROJECTION_FILE):
        raise InputError(f"{record.experiment} run with projection={projection}: not the positive control's "
                         f"guidance-dose run ({KNOWN_ANSWER_COMMAND})")
    atomic_write_json(KNOWN_ANSWER, {"command": KNOWN_ANSWER_COMMAND, "experiment": record.experiment,
                                     "version": record.version, "git_hash": record.git_hash, "date": record.date,
                                     "model": record.model, "config": record.config, "metrics": record.metrics})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
