"""Do guided samples and distillation losses stay what they were? Values pinned before the issue-14 redesign.

The numbers below were computed on main before the hook / family-registry redesign (commit 016b07a) from the tiny
twin (``write_tiny(seed=0)``), and the redesign was checked to reproduce them bit for bit on that machine. The test
allows float32 rounding of other CPUs (rtol 1e-5), far below what any change of the vectors, the rows they reach or
the CFG arithmetic does (a missing final-layer vector or a swapped row policy moves these sums by percents).
"""

from __future__ import annotations

import csv

import pytest
import torch

from anima_probe.guidance.guided import Cell, Guidance, prepare, sample_cells
from anima_probe.guidance.samplers import initial_noise
from anima_probe.guidance.schedules import Schedule
from anima_probe.guidance.sources import CosmosPooledAdapter, PooledTextProjection
from anima_probe.model.clip import load_clip, write_tiny_clip
from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from anima_probe.training.distill import DistillConfig, distill

PROMPTS = ["1girl, solo", "scenery, landscape"]
POS, NEG, NEGATIVE = "masterpiece, best quality", "worst quality", "lowres"
CELLS_A = [Cell(None, 4.0), Cell(Guidance(3.0), 4.0),
           Cell(Guidance(2.0, Schedule.parse("step:1"), final_w=0.5, row_policy="cond-only"), 3.0),
           Cell(Guidance(1.0, row_policy="official"), 1.0),
           Cell(Guidance(2.0, Schedule.parse("sorryhyun"), row_policy="both"), 4.0)]
CELLS_B = [Cell(None, 4.0), Cell(Guidance(3.0), 4.0), Cell(Guidance(2.0, Schedule.parse("interval:1:1]")), 3.0),
           Cell(Guidance(1.0, row_policy="per-row-base"), 1.0)]
# per sample: the sum of each cell, the sum of |x|, and x at flat positions 0, numel // 3 and numel - 1
PINNED = {
    "a/euler": ([228.25730175618082, 639.6711949817836, 820.1592535823584, 376.35139289777726, 316.44611508771777],
                16553.901817299426, [-0.7221930027008057, -2.613499879837036, 1.830737829208374]),
    "a/er_sde": ([271.62239718064666, 645.0730997128412, 851.4639292955399], 10262.63462926168,
                 [0.05637040734291077, 2.6617631912231445, 0.9943482279777527]),
    "b/euler": ([228.25730175618082, 179.90629108063877, 225.2040007263422, 211.6383216176182], 10574.207122740336,
                [-0.7221930027008057, -0.581835925579071, 1.1851518154144287]),
    "b/er_sde": ([162.30921136960387, 103.68619239702821], 4967.954098418355,
                 [0.8683940172195435, 0.388582706451416, 1.8880982398986816]),
}
PINNED_LOSSES = {"pooled_text_proj": [0.00042245357, 0.014468766, 0.014073467, 0.018966326],
                 "cosmos": [0.00042245357, 0.00077437377, 0.00043067956, 0.0007541771]}
CAPTIONS = ["score_9, masterpiece, 1girl, solo", "worst quality, mecha, robot", "scenery, landscape, sunset",
            "1boy, fighting, action", "still life, fruit", "abstract, pattern", "portrait, close-up, smile",
            "multiple girls, group, night sky"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_clip(write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", hidden=64, layers=1))


def _projection(anima) -> PooledTextProjection:
    d, text_dim = anima.dit_config.hidden, anima.dit_config.text_dim
    torch.manual_seed(1)
    proj = PooledTextProjection(d, text_dim)
    with torch.no_grad():
        proj.linear_out.weight.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d**0.5)
        proj.linear_out.bias.copy_(0.1 * torch.randn(d, generator=torch.Generator().manual_seed(2)))
    return proj


def _adapter(anima, clip) -> CosmosPooledAdapter:
    torch.manual_seed(5)
    adapter = CosmosPooledAdapter(anima.dit_config.hidden, anima.num_blocks, clip_dim=clip.dim)
    with torch.no_grad():
        adapter.scales.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(6))
    return adapter


def _check(name: str, x: torch.Tensor) -> None:
    sums, abs_sum, points = PINNED[name]
    x = x.double()
    flat = x.flatten()
    torch.testing.assert_close(x.sum(dim=tuple(range(1, x.ndim))), torch.tensor(sums, dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)
    assert x.abs().sum().item() == pytest.approx(abs_sum, rel=1e-5)
    torch.testing.assert_close(flat[[0, flat.numel() // 3, flat.numel() - 1]],
                               torch.tensor(points, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_guided_samples_of_both_families_are_the_pinned_ones(tiny_anima, clip):
    noise = initial_noise(tiny_anima, len(PROMPTS), 8, 0)
    gp = prepare(tiny_anima, _projection(tiny_anima), PROMPTS, POS, NEG, NEGATIVE)
    _check("a/euler", sample_cells(tiny_anima, gp, CELLS_A, noise, steps=3))
    _check("a/euler", sample_cells(tiny_anima, gp, CELLS_A, noise, steps=3, chunk=2))
    _check("a/er_sde", sample_cells(tiny_anima, gp, CELLS_A[:3], noise, steps=3, sampler="er_sde", seed=7))
    gp = prepare(tiny_anima, _adapter(tiny_anima, clip), PROMPTS, POS, NEG, NEGATIVE, clip=clip)
    _check("b/euler", sample_cells(tiny_anima, gp, CELLS_B, noise, steps=3))
    _check("b/er_sde", sample_cells(tiny_anima, gp, CELLS_B[:2], noise, steps=2, sampler="er_sde", seed=3))


@pytest.mark.parametrize("family", ["pooled_text_proj", "cosmos"])
def test_distillation_losses_are_the_pinned_ones(tiny_anima, clip, tmp_path, family):
    cfg = DistillConfig(family=family, data="teacher", resolution=8, steps=4, batch_size=4, val_count=2,
                        val_sigmas=(0.2, 0.7), val_every=2, checkpoint_every=2, teacher_steps=2, warmup=2, lr=3e-3)
    rows = [CaptionRow(id=f"r{i}", caption=c, artist="@a") for i, c in enumerate(CAPTIONS)]
    write_caption_set(rows, tmp_path / "c.csv")
    distill(cfg, tmp_path / "run", tmp_path / "c.csv", tiny_anima, clip=clip, progress=False)
    with (tmp_path / "run" / "loss.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert losses == pytest.approx(PINNED_LOSSES[family], rel=1e-4)
