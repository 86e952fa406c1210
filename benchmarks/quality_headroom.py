"""Benchmark: how much of the toy quality scale does the guidance sampler render, at its step count and at more?

guidance-dose reads every effect on the toy quality score of images its Euler sampler draws in few steps (v5: 6).
A gain can only show where the sampler renders the quality factor at all. This measures that range with the
strongest lever there is, the quality tags written into the prompt, on guidance-dose's own 16 toy prompts x 2 noise
draws at 6 / 12 / 20 steps and CFG 1 / 3:

- the shipped toy model (no modulation path): the prompt untagged, with p- and with p+ in front;
- the positive control (its own pooled path on every row): the same, plus Eq. 3 on the untagged prompt at
  w = 0 / 1 / 2, which by construction is the training input of quality 1 / 5 / 9 (``positive_control``).

The ratio per model is the share of the 20-step range (score with p+ in the prompt minus with p-) that the
experiment's step count renders. Scores are means over the 32 rows; the same noise in every cell.

Run: .venv/bin/python benchmarks/quality_headroom.py   (writes reports/benchmarks/quality-headroom.json)
"""

from __future__ import annotations

import argparse

import torch

from anima_probe.guidance.dose import Sweep, reference_sample, scores, toy_prompts
from anima_probe.guidance.guided import Cell, Guidance, prepare, sample_cells
from anima_probe.guidance.samplers import initial_noise
from anima_probe.model.anima import load_anima
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline import benchmark_records as rec
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.toyworld import positive_control as pc

COMMAND = ".venv/bin/python benchmarks/quality_headroom.py"
STEPS = (6, 12, 20)
CFGS = (1.0, 3.0)
SHIFT = 3.0
EQ3_WS = (0.0, 1.0, 2.0)
EXPERIMENT_STEPS = 6  # guidance-dose v5's (experiments/guidance_dose.py)


@torch.no_grad()
def tagged(anima, projection, prompts: list[str], pair: dict, noise: torch.Tensor, steps: int, cfg: float
           ) -> dict[str, float]:
    """Mean score with the prompts untagged and with p- / p+ in front; a model with a path reads its own base."""
    out = {}
    for name, tag in (("untagged", None), ("p-", pair["negative"]), ("p+", pair["positive"])):
        texts = prompts if tag is None else [f"{tag}, {p}" for p in prompts]
        if projection is None:  # the plain model: no modulation at all, as guidance-dose's prompt baseline
            tc = encode_prompts(anima, texts + [""]).crossattn_emb
            images = reference_sample(anima, tc[:-1], tc[-1:].expand(len(texts), -1, -1), None, cfg, noise,
                                      Sweep((0.0, 1.0), (cfg,), steps, SHIFT))
        else:
            gp = prepare(anima, projection, texts, pair["positive"], pair["negative"])
            images = anima.decode(sample_cells(anima, gp, [Cell(Guidance(0.0), cfg)], noise, steps=steps,
                                               shift=SHIFT)[0])
        out[name] = float(scores(images).mean())
    return out


@torch.no_grad()
def planted(anima, projection, prompts: list[str], pair: dict, noise: torch.Tensor, steps: int, cfg: float
            ) -> dict[str, float]:
    """Mean score of Eq. 3 at absolute w on the untagged prompts (the planted quality 1 + 4w)."""
    gp = prepare(anima, projection, prompts, pair["positive"], pair["negative"])
    x = sample_cells(anima, gp, [Cell(Guidance(w), cfg) for w in EQ3_WS], noise, steps=steps, shift=SHIFT)
    images = anima.decode(x.flatten(0, 1)).view(len(EQ3_WS), len(prompts), *x.shape[-3:])
    return {f"Eq. 3 w={w:+g}": float(s) for w, s in zip(EQ3_WS, scores(images).mean(1), strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(rec.RECORDS_DIR), help="where the JSON record goes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pair = load_prompt_sets()["guidance"]
    prompts = toy_prompts(16) * 2
    tables, ratios = [], []
    for label, folder in (("shipped toy model", None), ("positive control", pc.SHIPPED)):
        anima = load_anima(folder, with_vae=False) if folder else load_anima(with_vae=False)
        projection = pc.load_projection(str(folder / pc.PROJECTION_FILE), anima) if folder else None
        noise = initial_noise(anima, len(prompts), 32, 0)
        rows, spans = [], {}
        for steps in STEPS:
            for cfg in CFGS:
                cell = tagged(anima, projection, prompts, pair, noise, steps, cfg)
                if projection is not None:
                    cell |= planted(anima, projection, prompts, pair, noise, steps, cfg)
                spans[steps, cfg] = cell["p+"] - cell["p-"]
                rows.append([steps, cfg, *cell.values(), spans[steps, cfg]])
        columns = ["Euler steps", "CFG", *cell, "p+ minus p-"]
        tables.append(rec.Table(f"{label}: mean toy quality score (1..9) of 32 rows", columns,
                                ["{}", "{:g}", *["{:.2f}"] * (len(columns) - 2)], rows))
        ratios += [rec.Ratio(f"{label}, CFG {cfg:g}: p+ minus p- at {EXPERIMENT_STEPS} steps / at {STEPS[-1]}",
                             spans[EXPERIMENT_STEPS, cfg] / spans[STEPS[-1], cfg]) for cfg in CFGS]
    notes = ["The range p+ minus p- in the prompt is the largest quality change any steering can be expected to show "
             "on these prompts at that step count; guidance-dose's effects and MDEs are read against it.",
             "Eq. 3 on the positive control at w = 0 / 1 / 2 is, by construction, the training input of quality "
             "1 / 5 / 9 on a stripped caption."]
    record = rec.BenchmarkRecord("quality-headroom", "How much of the toy quality scale the guidance sampler "
                                 "renders, at its step count and at more", COMMAND,
                                 rec.machine_info(1, "shared with other jobs; fp32"), tables, ratios, notes)
    print(record.markdown())
    print(f"wrote {rec.write_record(record, args.records)}")


if __name__ == "__main__":
    main()
