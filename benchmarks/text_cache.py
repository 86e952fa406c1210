"""Benchmark: is a rerun of a text experiment fast because the embedding cache holds the pooled vectors?

Cold = an empty cache folder (and an empty file-hash memo): every caption is encoded (Qwen3 + LLM adapter) and
pooled. Warm = the same call again in a new `EmbeddingCache` (as a new process would make it): vectors are read
from disk. Measured on the shipped toy model with 1,000 toy-world captions, then, for every text experiment
(``needs_dit=False``) that `experiment.discover` finds, the whole `experiment.run` cold vs warm (model loaded once
and passed in, so both exclude loading). Target: warm >= 20x faster than cold.

The machine is shared with other jobs; two torch threads competing with theirs made the cold toy encode ~20x
slower in wall time in an earlier run (145 s vs 6 s), which would flatter the cache.
So torch runs on one thread and the clock is this process's CPU time (`time.process_time`, user + system, disk
reads included); wall time is reported beside it.

Run: .venv/bin/python benchmarks/text_cache.py   (writes reports/benchmarks/text-cache.json)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.timing import timed

COMMAND = ".venv/bin/python benchmarks/text_cache.py"
TARGET = 20.0  # a warm rerun should be at least 20x faster than a cold one
N_CAPTIONS = 1000


def toy_captions(n: int, seed: int = 2024) -> list[str]:
    """n toy-world captions (shuffled meta block, content tags, artist tag), without rendering any image."""
    from anima_probe.toyworld.world import caption_for, sample_factors

    rng = np.random.default_rng(seed)
    return [caption_for(f["artist"], f["content"], f["quality"], f["resolution"], rng) for f in sample_factors(n, seed)]


def time_pooled(anima, captions: list[str], root: Path) -> dict:
    from anima_probe.pipeline.cache import EmbeddingCache

    cold, first = timed(lambda: EmbeddingCache(root, anima).pooled(captions, progress=False))
    warm, second = timed(lambda: EmbeddingCache(root, anima).pooled(captions, progress=False))
    same = all(torch.equal(first[k], second[k]) for k in first)
    return {"cold": cold, "warm": warm, "same": same}


def time_experiments(anima, root: Path, overrides: dict[str, list[str]] | None = None) -> list[dict]:
    """Whole runs of the text experiments, cold then warm, each with its own cache folder."""
    from anima_probe.pipeline import experiment

    try:
        registry = experiment.discover()
    except Exception as err:  # a neighbour's half-written experiment must not stop the cache figure
        print(f"experiment discovery failed ({err!r}); timing EmbeddingCache.pooled only", file=sys.stderr)
        return []
    out = []
    for name, exp in sorted(registry.items()):
        if exp.needs_dit:
            continue
        extra = (overrides or {}).get(name, [])
        run = functools.partial(experiment.run, name, extra, anima=anima, results=root / "results",
                                cache_dir=root / f"exp-{name}", progress=False, registry=registry)
        cold, _ = timed(run)
        warm, _ = timed(run)
        out.append({"name": name, "version": exp.version, "cold": cold, "warm": warm, "overrides": extra})
    return out


# The toy encoder is so small that a cold encode costs little more than reading the cache, so the whole text
# experiments are also timed with a full-size text side: random Qwen3-0.6B + 6-layer adapter in bf16, written
# in the real file formats and loaded through load_anima (a 2-block DiT rides along; text experiments never run
# it). The toy tokenizers make captions shorter than real Anima tag captions, so cold encoding is if anything
# under-counted here. The quality experiments' nulls are cut to FULL_SIZE_OVERRIDES to keep the benchmark
# to minutes (the null's prompts dominate their cold cost).
FULL_SIZE_OVERRIDES = {"quality-direction": ["n_null=20"], "quality-resolution": ["n_null=20"]}


def full_text_side_folder(out: Path) -> Path:
    """A model folder with a full-size random text side (Qwen3-0.6B + adapter, bf16) and a minimal DiT."""
    import shutil

    from anima_probe.model.anima import default_model_dir
    from anima_probe.model.dit_file import (
        ADAPTER_PREFIX,
        ANIMA_ADAPTER,
        DiTConfig,
        adapter_layout,
        dit_layout,
    )
    from anima_probe.model.tiny import random_tensors, write_dit_file, write_qwen3_file

    sys.path.insert(0, str(Path(__file__).parent))
    from text_encoding import qwen3_06b

    for tok in ("qwen25_tokenizer", "t5_tokenizer"):
        shutil.copytree(default_model_dir() / tok, out / tok)
    torch.manual_seed(0)
    write_qwen3_file(out / "text_encoders" / "qwen3-0.6b-random.safetensors", qwen3_06b().to(torch.bfloat16))
    dit = DiTConfig(hidden=64, num_blocks=2, head_dim=32, mlp_hidden=256, text_dim=1024, adaln_lora_dim=16,
                    in_channels=16, out_channels=16, patch=2)
    g = torch.Generator().manual_seed(0)
    state = random_tensors(dit_layout(dit), g)
    state.update({ADAPTER_PREFIX + k: v for k, v in random_tensors(adapter_layout(ANIMA_ADAPTER), g).items()})
    write_dit_file(out / "diffusion_models" / "anima-fulltext-random.safetensors",
                   {k: v.to(torch.bfloat16) for k, v in state.items()}, "net.")
    return out


def _row(label: list, cold, warm) -> list:
    ratio = cold.cpu / warm.cpu
    return [*label, [cold.cpu, cold.wall], [warm.cpu, warm.wall], [ratio, "met" if ratio >= TARGET else "NOT met"]]


def to_record(captions: list[str], pooled: dict, runs: list[dict], full_runs: list[dict], machine: dict,
              **provenance) -> rec.BenchmarkRecord:
    """The record from `time_pooled` and the two `time_experiments` lists (toy model, full-size text side)."""
    time, ratio = "{:.3g} s ({:.3g} s)", "{:.3g}x ({})"
    toy = rec.Table(f"Embedding cache: cold vs warm (shipped toy model, {len(captions):,} toy-world captions, "
                f"{len(set(captions)):,} distinct)", ["what", "cold CPU s (wall)", "warm CPU s (wall)",
                                                      f"cold / warm, CPU time (target >= {TARGET:g}x)"],
                ["{}", time, time, ratio],
                [_row(["`EmbeddingCache.pooled` (10 pooled vectors per caption)"], pooled["cold"], pooled["warm"])]
                + [_row([f"whole `experiment.run('{r['name']}')` v{r['version']}, default config"], r["cold"],
                        r["warm"]) for r in runs])
    full = rec.Table("Whole text experiments with a full-size text side (random Qwen3-0.6B + adapter, bf16, toy caption "
                 "sets)", ["experiment", "overrides", "cold CPU s (wall)", "warm CPU s (wall)",
                           f"cold / warm (target >= {TARGET:g}x)"], ["{}", "{}", time, time, ratio],
                 [_row([f"`{r['name']}` v{r['version']}", " ".join(r["overrides"]) or "defaults"], r["cold"],
                       r["warm"]) for r in full_runs])
    ratios = [rec.Ratio(f"toy model: {row[0]}, cold / warm CPU time", row[-1][0], TARGET, "higher") for row in toy.rows]
    ratios += [rec.Ratio(f"full-size text side: {row[0]}, cold / warm CPU time", row[-1][0], TARGET, "higher")
               for row in full.rows]
    notes = [f"Warm vectors equal the cold ones bit for bit: {pooled['same']}. Cold includes hashing the model files "
             "for the cache key; both exclude model loading (done once). "
             + ("No text experiment (`needs_dit=False`) was found." if not runs else
                "pooling-nmi's per-pooling statistics (KMeans fits, bootstrap, permutation null) are also kept, "
                "keyed by the pooled vectors' values, the config and the statistics' code (`Context.memoized`); the "
                "quality experiments' nulls are plain numpy on the pooled table and are recomputed."),
             "On the toy model encoding costs little more than reading the cache, so whole runs there are dominated by "
             "the fixed costs of a run (figures, tables, writing the run folder). The full-size table is the case a "
             "user without a GPU meets: there the cold run pays for encoding every caption, which the warm rerun "
             "skips."]
    return rec.BenchmarkRecord("text-cache", "Text experiments rerun from the embedding cache: cold vs warm", COMMAND,
                           machine, [toy, full], ratios, notes, **provenance)


def main() -> None:
    from anima_probe.model.anima import load_anima

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    machine = rec.machine_info(1, "shared with other jobs")
    captions = toy_captions(N_CAPTIONS)
    with tempfile.TemporaryDirectory() as d:
        os.environ["ANIMA_PROBE_CACHE"] = d  # the file-hash memo starts empty too
        anima = load_anima(with_vae=False)
        pooled = time_pooled(anima, captions, Path(d) / "pooled-bench")
        runs = time_experiments(anima, Path(d))
        del anima
        full = load_anima(full_text_side_folder(Path(d) / "fulltext"), dtype=torch.bfloat16, with_vae=False)
        full_runs = time_experiments(full, Path(d) / "full", FULL_SIZE_OVERRIDES)
    record = to_record(captions, pooled, runs, full_runs, machine)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
