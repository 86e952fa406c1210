"""Can the suite see a modulation-guidance gain where one exists? A toy Anima that carries quality by modulation.

Issue 11's positive control. The toy world is trained from scratch with a text-aware modulation path, FLUX-style:
the max-pooled (padded) ``crossattn_emb`` of the caption -> ``PooledTextProjection`` (Linear -> SiLU -> Linear) ->
added to every block's and the final layer's ``embedded_timestep`` (the output of ``t_embedding_norm``), through
the same injection the guided sampler uses (``guidance.modulation``). So the trained projection *is* a
``pooled_text_proj`` modulation source in the community format, and Eq. 3 with it is the model's own mechanism.

Known answer by construction: on a fixed half of the training images (``stripped_rows``) the quality tags
(``world.quality_tags``: ``score_q`` and the quality words; resolution tags are a separate factor and stay) are
removed from the cross-attention caption and kept only in the pooled input. Quality is then reachable through
modulation alone, and guidance with the proposal's p+/p- must raise the toy quality score; if the suite does not
see that, the suite is broken.

Dropout. The caption's usual 10 % dropout empties the whole text (cross-attention *and* pooled input, as a caption
dropped to "" has an empty pooled input too); the pooled path has its own 10 % dropout on top. A dropped pooled
input is the *empty prompt's* max-pooled ``crossattn_emb``, not a zero vector: at inference the CFG uncond row's
base is ``P(pool(crossattn_emb("")))`` (``CFGRowPolicy`` per-row-base with negative "" and official both read the
empty prompt), so training on the same vector keeps that row in distribution. (The padded max of "" is not zero:
its [</s>] row is a real adapter output.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anima_probe.guidance.families import POOLED_TEXT_PROJ
from anima_probe.guidance.modulation import constant, inject
from anima_probe.guidance.sources import PooledTextProjection, load_pooled_text_proj
from anima_probe.model.anima import CROSSATTN_TOKENS
from anima_probe.model.text import PromptTokens, crossattn
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.probes.pooling import pool_named
from anima_probe.toyworld.world import ToyImage, quality_tags

POOLING = "max_padded"  # sorryhyun's pooling, which guided.prepare uses at inference for this family
PROJECTION_FILE = "pooled_text_proj.safetensors"  # inside the model folder: a model that carries its own source
SHIPPED = REPO_ROOT / "data" / "toyworld" / "positive_control" / "model"  # its projection inside (PROJECTION_FILE)
_STRIP_STREAM = 424_243  # the half-split draws from its own seed stream, never from a training step's


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


def training_texts(world: list[ToyImage], fraction: float, seed: int) -> tuple[list[str], np.ndarray]:
    """All texts to encode once -- the full captions, then the stripped ones, then "" (last) -- and per image the
    row of its cross-attention text, (N,) int. The pooled input of image i is always row i (the full caption)."""
    mask = stripped_rows(len(world), fraction, seed)
    extra = [strip_quality_tags(w.caption, w.quality) for w, m in zip(world, mask, strict=True) if m]
    rows = np.arange(len(world))
    rows[mask] = len(world) + np.arange(len(extra))
    return [w.caption for w in world] + extra + [""], rows


def new_projection(hidden: int, text_dim: int, seed: int) -> PooledTextProjection:
    """The path's MLP, initialised as the community trainer's (zero output layer: a no-op before training)."""
    torch.manual_seed(seed + 1)  # after the DiT and adapter, so their initial weights do not depend on the path
    return PooledTextProjection(hidden, text_dim=text_dim)


def pooled_input(crossattn_emb: torch.Tensor, t5_mask: torch.Tensor) -> torch.Tensor:
    """The path's input: max over all 512 rows of ``crossattn_emb`` (B, 512, Dt) -> (B, Dt), as at inference;
    ``t5_mask`` (B, L <= 512) marks the real T5 tokens."""
    mask = F.pad(t5_mask, (0, CROSSATTN_TOKENS - t5_mask.shape[1]))  # (B, 512)
    return pool_named(crossattn_emb, mask, POOLING)


def conditioning(adapter, hidden: torch.Tensor, tok: PromptTokens, text_idx: torch.Tensor,
                 pool_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention input (B, 512, Dt) of rows ``text_idx`` and the pooled input (B, Dt) of rows ``pool_idx``
    (None: no pooled path). The adapter runs once more only for rows whose pooled text differs."""
    if pool_idx is None:
        return crossattn(adapter, hidden[text_idx], tok[text_idx]), None
    differs = (pool_idx != text_idx).nonzero().flatten()  # (k,)
    rows = torch.cat([text_idx, pool_idx[differs]])  # (B + k,)
    ctx = crossattn(adapter, hidden[rows], tok[rows])  # (B + k, 512, Dt)
    pooled = pooled_input(ctx, tok.t5_mask[rows])  # (B + k, Dt)
    B = len(text_idx)
    return ctx[:B], pooled[:B].index_put((differs,), pooled[B:])  # (B, 512, Dt), (B, Dt)


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
