"""Which captions does the artist-clustering experiment use when no real caption set is given?

A toy-world caption set: `world.generate` captions (meta block, content tags, one ``@artist`` tag) with their
artist labels, in the caption-set schema `manifests.read_caption_set` reads (``id, caption, artist, image,
tags``). It is drawn with a seed the shipped toy model was not trained on (it was trained on seed 0, see
``data/toyworld/gpu_train.json``), so clustering scores are measured on captions the adapter never saw.
The committed file ``data/manifests/toyworld_captions.csv`` is exactly what `main` writes with its defaults;
a test regenerates it and compares byte for byte.

    .venv/bin/python -m anima_probe.toyworld.captions        # rewrites data/manifests/toyworld_captions.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anima_probe.pipeline.manifests import MANIFEST_DIR, CaptionRow, write_caption_set
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.toyworld.world import generate

TOYWORLD_CAPTIONS = MANIFEST_DIR / "toyworld_captions.csv"
CAPTION_SEED = 4242  # any seed but the training seed; 4242 is used nowhere else in the project
CAPTION_COUNT = 360  # 30 captions per artist on average (12 artists); sized for a sub-minute CPU run
TRAIN_RECORD = REPO_ROOT / "data" / "toyworld" / "gpu_train.json"


def training_seed(record: str | Path = TRAIN_RECORD) -> int:
    """The seed the shipped toy model's training images were drawn with (from its training record)."""
    return int(json.loads(Path(record).read_text(encoding="utf-8"))["config"]["seed"])


def toyworld_caption_set(n: int = CAPTION_COUNT, seed: int = CAPTION_SEED) -> list[CaptionRow]:
    """n toy-world captions with their artist labels; refuses the training seed (those captions were seen)."""
    if seed == training_seed():
        raise ValueError(f"seed {seed} is the toy model's training seed ({TRAIN_RECORD}); pick another")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # generate() also renders the pixels (about 1 ms each); the captions come from the same per-item streams,
    # so using it keeps the set identical to the images a user would render with the same (n, seed).
    return [CaptionRow(im.id, im.caption, im.artist) for im in generate(n, seed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the toy-world caption set for the pooling-nmi experiment")
    parser.add_argument("--n", type=int, default=CAPTION_COUNT)
    parser.add_argument("--seed", type=int, default=CAPTION_SEED)
    parser.add_argument("--out", default=str(TOYWORLD_CAPTIONS))
    args = parser.parse_args(argv)
    rows = toyworld_caption_set(args.n, args.seed)
    path = write_caption_set(rows, args.out)
    print(f"wrote {len(rows)} captions of {len({r.artist for r in rows})} artists to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
