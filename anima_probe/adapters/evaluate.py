"""Does a LoRA draw its new artist, and are the other twelve still recognisable with it on?

The artist classifier (`toyworld.classifier`, fitted on procedural images only, never on samples) is refitted on
13 artists: the twelve shipped ones and the novel one. The toy model samples the same prompts from the same noise
with and without the adapter; accuracy is the share of samples whose predicted artist is the prompted one.
- novel artist: 8 contents x 4 meta prefixes = 32 prompts with the novel tag. Base vs adapter, paired by prompt and
  noise; the 95 % interval of the difference is a bootstrap over prompts (a prompt's samples move together when
  there are several per prompt).
- the other twelve: 12 artists x 8 contents = 96 prompts, with and without the adapter (style bleed shows as a drop).
The base model has never seen the novel tag, so its novel accuracy is the negative control (near 0: it draws some
shipped artist); the classifier's held-out accuracy on procedural images of all 13 is the positive control.

    .venv/bin/python -m anima_probe.adapters.evaluate data/toyworld/lora/tsuki_hoshi-lora.safetensors
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from anima_probe.adapters.load import adapter_applied, adapter_kind
from anima_probe.guidance.samplers import cfg_combine, sample_euler, simple_sigmas
from anima_probe.model.anima import load_anima
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.pipeline.provenance import sha256_file
from anima_probe.probes.stats import bootstrap_ci
from anima_probe.toyworld.classifier import FactorClassifier, fit_factor_classifier
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS, CONTENT_TYPES, NOVEL_ARTISTS, generate

META_PREFIXES = ("score_8", "score_6", "highres, score_7", "masterpiece, best quality, score_9")


@dataclass(frozen=True)
class NovelArtistEvalConfig:
    artist: str = NOVEL_ARTISTS[0]
    seed: int = 0  # sampling noise (the same for base and adapter)
    # 12 Euler steps (toyworld-evidence uses 20): on the shared 2-core machine every sample counts, and palette,
    # outline and texture are settled long before the last steps (fixed before any adapter was evaluated).
    steps: int = 12
    cfg: float = 4.0
    novel_samples_per_prompt: int = 1
    others: bool = True  # also sample the twelve shipped artists
    classifier_images: int = 2400  # of the twelve shipped artists
    novel_classifier_images: int = 200
    classifier_seed: int = 777  # a world seed neither the toy model nor the LoRAs trained on
    holdout_images: int = 390  # held-out procedural images for the classifier's own accuracy (13 x ~30)
    n_boot: int = 1000


def novel_prompts(artist: str) -> list[str]:
    return [f"{meta}, {', '.join(CONTENT_TAGS[c])}, {artist}" for c in CONTENT_TYPES for meta in META_PREFIXES]


def other_prompts() -> tuple[list[str], list[str]]:
    grid = [(a, c) for a in ARTISTS for c in CONTENT_TYPES]
    return [f"score_8, {', '.join(CONTENT_TAGS[c])}, {a}" for a, c in grid], [a for a, _ in grid]


def _world(n: int, seed: int, novel: int, artist: str):
    items = generate(n, seed) + generate(novel, seed, artists=(artist,))
    return np.stack([w.image for w in items]), [w.artist for w in items]


def fit_artist_classifier(cfg: NovelArtistEvalConfig) -> tuple[FactorClassifier, float]:
    """The 13-artist classifier and its accuracy on held-out procedural images (seed + 1)."""
    x, y = _world(cfg.classifier_images, cfg.classifier_seed, cfg.novel_classifier_images, cfg.artist)
    clf = fit_factor_classifier(x, y, seed=0)
    hx, hy = _world(cfg.holdout_images * 12 // 13, cfg.classifier_seed + 1, cfg.holdout_images // 13, cfg.artist)
    return clf, clf.accuracy(hx, hy)


@torch.no_grad()
def sample(anima, prompts: list[str], seed: int, steps: int, cfg: float) -> np.ndarray:
    """CFG samples (N, H, W, 3) in [0, 1] from one seeded noise draw."""
    tc = encode_prompts(anima, prompts + [""])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)  # (N, 512, D)
    side = 32 // (8 if anima.vae is not None else 1)
    shape = (len(prompts), anima.dit_config.in_channels, side, side)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(anima.device, anima.dtype)

    def velocity(x_t, s):
        return cfg_combine(anima.velocity(x_t, s, cond), anima.velocity(x_t, s, uncond), cfg)

    x0 = sample_euler(velocity, x, simple_sigmas(steps), disable=True)
    return anima.decode(x0).float().permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)


def _correct(anima, clf, prompts: list[str], labels: list[str], cfg: NovelArtistEvalConfig, reps: int) -> np.ndarray:
    """(P, reps) bool: sample r of prompt p shows its artist."""
    images = sample(anima, prompts * reps, cfg.seed, cfg.steps, cfg.cfg)
    hit = np.asarray(clf.predict(images)) == np.asarray(labels * reps)
    return hit.reshape(reps, len(prompts)).T


def _mean_ci(values: np.ndarray, cfg: NovelArtistEvalConfig) -> tuple[float, float, float]:
    """Mean over prompts of the per-prompt value, with a bootstrap-over-prompts 95 % interval."""
    per_prompt = values.reshape(len(values), -1).mean(axis=1)  # (P,)
    lo, hi = bootstrap_ci(lambda idx: per_prompt[idx].mean(), len(per_prompt), cfg.n_boot, seed=cfg.seed)
    return float(per_prompt.mean()), lo, hi


def evaluate(anima, adapters: dict[str, str], cfg: NovelArtistEvalConfig = NovelArtistEvalConfig()) -> dict:
    """Flat metrics for the base model and every adapter file in `adapters` (label -> path)."""
    clf, holdout = fit_artist_classifier(cfg)
    novel = novel_prompts(cfg.artist)
    others, other_labels = other_prompts()
    out = {"classifier/holdout_accuracy": holdout}
    base = _correct(anima, clf, novel, [cfg.artist] * len(novel), cfg, cfg.novel_samples_per_prompt)
    out |= dict(zip(("novel/base", "novel/base_lo", "novel/base_hi"), _mean_ci(base, cfg)))
    base_others = _correct(anima, clf, others, other_labels, cfg, 1) if cfg.others else None
    if base_others is not None:
        out |= dict(zip(("others/base", "others/base_lo", "others/base_hi"), _mean_ci(base_others, cfg)))
    for label, path in adapters.items():
        with adapter_applied(anima, path):
            hit = _correct(anima, clf, novel, [cfg.artist] * len(novel), cfg, cfg.novel_samples_per_prompt)
            hit_others = _correct(anima, clf, others, other_labels, cfg, 1) if cfg.others else None
        out |= dict(zip((f"novel/{label}", f"novel/{label}_lo", f"novel/{label}_hi"), _mean_ci(hit, cfg)))
        diff = hit.astype(float) - base.astype(float)  # (P, reps) paired by prompt and noise
        out |= dict(zip((f"gain/{label}", f"gain/{label}_lo", f"gain/{label}_hi"), _mean_ci(diff, cfg)))
        if hit_others is not None:
            out |= dict(zip((f"others/{label}", f"others/{label}_lo", f"others/{label}_hi"),
                            _mean_ci(hit_others, cfg)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+", help="adapter files; each is labelled by its kind")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    anima = load_anima()
    labelled = {adapter_kind(p, anima.dit_config): p for p in args.adapters}
    metrics = evaluate(anima, labelled) | {"config": asdict(NovelArtistEvalConfig()), "files": labelled,
                                           "sha256": {k: sha256_file(p) for k, p in labelled.items()}}
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
