"""Which real images back the modulation-source distillation on the toy world?

The trainer reads a caption set whose rows point at image files (`manifests.read_caption_set`), as it would for a
user's own folder of captioned images. This writes toy-world images as PNG files plus that caption set, so the toy
world goes through exactly the same path: PNG -> `load_image` -> `anima.encode` (the identity map to [-1, 1] for the
pixel-space toy model). PNG stores 8 bits per channel, so pixels differ from `generate` by at most 1/510.

    .venv/bin/python -m anima_probe.toyworld.imageset OUT_DIR --n 512 --seed 7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from anima_probe.toyworld.world import generate

CAPTIONS_FILE = "captions.csv"


def write_image_set(out_dir, n: int, seed: int, size: int = 32) -> Path:
    """`generate(n, seed, size)` as ``out_dir/images/<id>.png`` + ``out_dir/captions.csv``; returns the csv."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for item in generate(n, seed, size):
        rel = f"images/{item.id}.png"
        pixels = np.clip(np.rint(item.image * 255), 0, 255).astype(np.uint8)  # (H, W, 3)
        Image.fromarray(pixels).save(out / rel)
        rows.append(CaptionRow(id=item.id, caption=item.caption, artist=item.artist, image=rel))
    return write_caption_set(rows, out / CAPTIONS_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    print(write_image_set(args.out_dir, args.n, args.seed, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
