"""Distillation trainer on tiny twins: data round trips, the student's injection, learning, exact resume, Ctrl-C
and NaN safety, gradient checkpointing, the cosmos family with a tiny CLIP, and two processes via accelerate."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anima_probe.guidance.sources import load_cosmos_pooled_adapter, load_pooled_text_proj
from anima_probe.model.anima import load_anima
from anima_probe.model.clip import load_clip, write_tiny_clip
from anima_probe.model.text import encode_prompts
from anima_probe.model.tiny import write_tiny
from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from anima_probe.probes.hooks import add_vector, patch
from anima_probe.probes.pooling import pool_named
from anima_probe.toyworld.imageset import write_image_set
from anima_probe.toyworld.world import generate
from anima_probe.training import data as distill_data
from anima_probe.training.data import DistillData, encode_images, prepare_data, teacher_samples
from anima_probe.training.distill import (
    DistillConfig,
    Student,
    TrainingInterrupted,
    batch,
    checkpointed_blocks,
    distill,
    distill_loss,
    new_source,
    student_velocity,
)
from anima_probe.training.loop import NonFiniteLoss, load_checkpoint

CAPTIONS = ["score_9, masterpiece, 1girl, solo", "worst quality, mecha, robot", "scenery, landscape, sunset",
            "1boy, fighting, action", "still life, fruit", "abstract, pattern", "portrait, close-up, smile",
            "multiple girls, group, night sky"]
FAST = DistillConfig(data="teacher", resolution=8, steps=6, batch_size=4, val_count=2, val_sigmas=(0.2, 0.7),
                     val_every=3, checkpoint_every=2, teacher_steps=2, warmup=2, lr=3e-3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_tiny(root / "model", with_vae=False)
    rows = [CaptionRow(id=f"r{i}", caption=c, artist="@a") for i, c in enumerate(CAPTIONS)]
    write_caption_set(rows, root / "captions.csv")
    return root


@pytest.fixture(scope="module")
def anima(tiny_dir):
    return load_anima(tiny_dir / "model", with_vae=False)


@pytest.fixture(scope="module")
def data(anima, tiny_dir, tmp_path_factory):
    return prepare_data(anima, FAST, tiny_dir / "captions.csv", tmp_path_factory.mktemp("d") / "data.pt",
                        progress=False)


def _losses(folder: Path) -> list[str]:
    with (folder / "loss.csv").open() as f:
        return [r["loss"] for r in csv.DictReader(f)]


def test_data_round_trip(anima, data):
    tc = encode_prompts(anima, CAPTIONS + [""])
    idx = torch.tensor([0, 3, 7])
    assert data.crossattn.shape[1] < 512  # stored cut to the longest caption
    assert torch.equal(data.context(idx), tc.crossattn_emb[idx])  # zero rows restored exactly
    assert torch.equal(data.context(), tc.crossattn_emb[-1:])
    assert torch.equal(data.pooled, pool_named(tc.crossattn_emb[:-1], tc.t5_mask[:-1], "max_padded"))
    assert data.n_train == len(CAPTIONS) - FAST.val_count and data.x0.shape == (len(CAPTIONS), 16, 8, 8)
    again = teacher_samples(anima, data.crossattn[2:5], data.empty, 8, FAST.data_seed, 2, FAST.teacher_cfg,
                            FAST.teacher_shift, batch_size=2, progress=False, start=2)
    torch.testing.assert_close(again, data.x0[2:5], atol=1e-5, rtol=1e-5)  # each row's noise is its own


def test_cache_is_reused_and_keyed(anima, tiny_dir, tmp_path, monkeypatch):
    cache = tmp_path / "data.pt"
    first = prepare_data(anima, FAST, tiny_dir / "captions.csv", cache, progress=False)
    stored = torch.load(cache, weights_only=True)["crossattn"]  # only the kept rows, not the 512-row storage
    assert stored.untyped_storage().nbytes() == stored.numel() * stored.element_size() < 512 * 32 * 4 * len(CAPTIONS)
    monkeypatch.setattr(distill_data, "encode_prompts", lambda *a, **k: pytest.fail("cache not used"))
    assert torch.equal(prepare_data(anima, FAST, tiny_dir / "captions.csv", cache, progress=False).x0, first.x0)
    with pytest.raises(pytest.fail.Exception, match="cache not used"):  # another pooling is another key
        prepare_data(anima, replace(FAST, pooling="mean_tokens"), tiny_dir / "captions.csv", cache, progress=False)


def test_images_are_encoded_and_missing_ones_named(tmp_path):
    anima = load_anima(write_tiny(tmp_path / "m"))  # with its tiny VAE
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(3):
        Image.fromarray((rng.random((24, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append(CaptionRow(id=f"r{i}", caption=CAPTIONS[i], artist="@a", image=f"img/{i}.png"))
    x0 = encode_images(anima, rows, tmp_path / "c.csv", 16, progress=False)
    crop = np.asarray(Image.open(tmp_path / "img" / "1.png"), dtype=np.float32)[4:20] / 255  # centre square
    want = anima.encode(torch.from_numpy(crop).permute(2, 0, 1)[None])
    assert x0.shape == (3, 16, 2, 2)
    torch.testing.assert_close(x0[1:2], want.float(), atol=1e-5, rtol=1e-5)  # batched vs alone
    rows[2] = CaptionRow(id="no-pixels", caption="x", artist="@a")
    manifest = write_caption_set(rows, tmp_path / "c.csv")
    with pytest.raises(ValueError, match=r"c\.csv:4: data 'images' needs an image per row; row 'no-pixels'"):
        distill_data.check_caption_set(replace(FAST, data="images", val_count=1), manifest)


def test_student_is_the_injection_and_starts_as_a_no_op(anima, data):
    source = new_source(FAST, anima, data.pooled.shape[1])
    student = Student(source, anima.num_blocks)
    idx, sigma, noise = batch(FAST, data, 0, 0, 1, "cpu")
    x_t = data.x0[idx] * (1 - sigma[:, None, None, None]) + noise * sigma[:, None, None, None]
    empty = anima.velocity(x_t, sigma, data.context().expand(len(idx), -1, -1))
    with torch.no_grad():
        assert torch.equal(student_velocity(anima, student, data, x_t, sigma, data.pooled[idx]), empty)
        source.linear_out.bias.normal_()  # the output is then this same vector for every prompt
        got = student_velocity(anima, student, data, x_t, sigma, data.pooled[idx])
        # the t_embedding_norm output feeds every block and the final layer: one add there is the same thing
        with patch(anima, {"t_embedding_norm": add_vector(source.linear_out.bias)}):
            want = anima.velocity(x_t, sigma, data.context().expand(len(idx), -1, -1))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (got - empty).abs().max() > 1e-4


def test_batch_is_a_share_of_one_global_draw(data):
    whole = batch(FAST, data, 5, 0, 1, "cpu")
    halves = [batch(FAST, data, 5, r, 2, "cpu") for r in range(2)]
    for k in range(3):
        assert torch.equal(torch.cat([h[k] for h in halves]), whole[k])
    assert not torch.equal(batch(FAST, data, 6, 0, 1, "cpu")[2], whole[2])
    with pytest.raises(ValueError, match="batch_size=4 must split evenly over 3 processes"):
        batch(FAST, data, 0, 0, 3, "cpu")


def test_training_learns_and_writes_the_community_file(anima, tiny_dir, tmp_path):
    cfg = replace(FAST, steps=40, batch_size=8, val_every=20, checkpoint_every=20)
    path = distill(cfg, tmp_path / "run", tiny_dir / "captions.csv", anima, progress=False)
    losses = [float(x) for x in _losses(tmp_path / "run")]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    proj = load_pooled_text_proj(path, model_channels=anima.dit_config.hidden)
    assert proj.linear_out.weight.abs().max() > 0  # left its zero init
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # at step 0 the zero-initialised source is a no-op: the student is the no-source student
    assert summary["val_start"]["val_loss"] == pytest.approx(summary["val_nosource"]["val_loss"], rel=1e-6)
    grid = ("0.2", "0.7")
    assert set(summary["val_end"]) == {"val_loss", *[f"{k}@{g}" for k in ("val", "resp_cos", "resp_norm") for g in grid]}
    # the distillation-quality probe: a no-op source has no p+/p- response at all; the trained one has one
    assert all(summary["val_start"][f"resp_norm@{g}"] == 0.0 for g in grid)
    assert all(summary["val_end"][f"resp_norm@{g}"] > 0.0 for g in grid)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_run_exactly(anima, tiny_dir, tmp_path):
    whole = distill(FAST, tmp_path / "whole", tiny_dir / "captions.csv", anima, progress=False)

    def stop(step, student):
        if step == 2:  # after 3 completed steps; the last checkpoint holds 2
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"checkpoint\.pt \(step 2\)\. Rerun the same command"):
        distill(FAST, tmp_path / "cut", tiny_dir / "captions.csv", anima, progress=False, on_step=stop)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint" / "checkpoint.pt")["step"] == 2
    resumed = distill(FAST, tmp_path / "cut", tiny_dir / "captions.csv", anima, progress=False)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "whole")  # every logged digit
    assert (tmp_path / "cut" / "val.csv").read_text() == (tmp_path / "whole" / "val.csv").read_text()
    a, b = load_file(resumed), load_file(whole)  # (the header's metadata order is not fixed: compare tensors)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="written for another config"):
        distill(replace(FAST, lr=1e-2), tmp_path / "cut", tiny_dir / "captions.csv", anima, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(anima, tiny_dir, tmp_path):
    ckpt = tmp_path / "checkpoint" / "checkpoint.pt"
    seen = {}

    def poison(step, student):
        if step == 1:  # the checkpoint of step 2 has just been written
            seen["bytes"] = ckpt.read_bytes()
            with torch.no_grad():
                for p in student.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 2; stopped without saving.*checkpoint\.pt"):
        distill(FAST, tmp_path, tiny_dir / "captions.csv", anima, progress=False, on_step=poison)
    assert ckpt.read_bytes() == seen["bytes"]
    state = load_checkpoint(ckpt)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["source"].values())
    assert not (tmp_path / "pooled_text_proj.safetensors").exists()


def test_gradient_checkpointing_gives_the_same_gradients(anima, data):
    grads = []
    for enabled in (False, True):
        source = new_source(FAST, anima, data.pooled.shape[1])
        with torch.no_grad():
            source.linear_out.weight.normal_(std=0.1)  # non-zero, so gradients reach the first layer
        with checkpointed_blocks(anima, enabled):
            assert anima.transformer.gradient_checkpointing is enabled
            distill_loss(anima, Student(source, anima.num_blocks), data, *batch(FAST, data, 1, 0, 1, "cpu"),
                         backward=torch.Tensor.backward)
        grads.append(torch.cat([p.grad.flatten() for p in source.parameters()]))
    assert anima.transformer.gradient_checkpointing is False  # restored
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)


def test_cosmos_family_with_a_tiny_clip(anima, tiny_dir, tmp_path):
    clip = load_clip(write_tiny_clip(tmp_path / "clip", seed=0))
    cfg = replace(FAST, family="cosmos", steps=3, lr=1e-2)
    with pytest.raises(ValueError, match="family 'cosmos' reads CLIP-L pooled text"):
        distill(cfg, tmp_path / "no-clip", tiny_dir / "captions.csv", anima, progress=False)
    path = distill(cfg, tmp_path / "run", tiny_dir / "captions.csv", anima, clip=clip, progress=False)
    adapter = load_cosmos_pooled_adapter(path, anima.dit_config.hidden, anima.num_blocks)
    assert adapter.clip_dim == clip.dim and adapter.scales.abs().min() > 0  # every block's scales trained
    data = DistillData(**{k: v for k, v in torch.load(tmp_path / "run" / "data.pt").items() if k != "key"})
    assert torch.equal(data.pooled, clip.pooled(CAPTIONS))


def test_write_image_set_round_trips_the_toy_images(tmp_path):
    from anima_probe.pipeline.manifests import read_caption_set

    rows = read_caption_set(write_image_set(tmp_path, n=3, seed=5))
    items = generate(3, 5)
    assert [r.caption for r in rows] == [t.caption for t in items]
    for row, item in zip(rows, items):
        got = distill_data.load_image(tmp_path / row.image, 32).permute(1, 2, 0).numpy()
        assert np.abs(got - item.image).max() <= 1 / 510 + 1e-6  # 8-bit PNG


@pytest.mark.slow
def test_two_processes_agree_and_log_once(anima, tiny_dir, tmp_path):
    """Two CPU processes (torchrun + Accelerator, gloo DDP): same weights on both ranks, one log row per step, and
    the same result as one process with the same global batch."""
    cfg = replace(FAST, steps=4, checkpoint_every=4, val_every=4)
    args = [f"{k}={v}" for k, v in (("data", "teacher"), ("resolution", 8), ("steps", 4), ("batch_size", 4),
                                     ("val_count", 2), ("val_sigmas", "0.2,0.7"), ("val_every", 4),
                                     ("checkpoint_every", 4), ("teacher_steps", 2), ("warmup", 2), ("lr", 3e-3))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; Accelerator(cpu=True) then runs DDP over gloo (`accelerate launch
    # --cpu` would start a single process: it leaves multi-CPU to mpirun)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 500), "-m", "anima_probe.cli", "distill", str(tiny_dir / "captions.csv"), *args,
           "--out", str(tmp_path / "ddp"), "--model", str(tiny_dir / "model"), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["rank_fingerprints"][0] == summary["rank_fingerprints"][1]
    with (tmp_path / "ddp" / "loss.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert done.stdout.count("pooled_text_proj:") == 1  # only the main process reports
    single = distill(cfg, tmp_path / "one", tiny_dir / "captions.csv", anima, progress=False)
    two = load_pooled_text_proj(tmp_path / "ddp" / "pooled_text_proj.safetensors").state_dict()
    for key, value in load_pooled_text_proj(single).state_dict().items():
        torch.testing.assert_close(two[key], value, atol=2e-3, rtol=2e-2)  # bf16 files
    np.testing.assert_allclose([float(x) for x in _losses(tmp_path / "ddp")],
                               [float(x) for x in _losses(tmp_path / "one")], rtol=1e-4)


def test_cli_stops_on_a_nan_with_a_clear_message(tiny_dir, tmp_path, capsys):
    from anima_probe.cli import main

    args = ["distill", str(tiny_dir / "captions.csv"), "data=teacher", "resolution=8", "batch_size=4", "val_count=2",
            "teacher_steps=2", "steps=4", "lr=1e38", "--out", str(tmp_path), "--model", str(tiny_dir / "model"),
            "--quiet"]
    assert main(args) == 1  # the first update (AdamW: ~lr per weight) overflows the student's output
    err = capsys.readouterr().err
    assert re.search(r"anima-probe distill: error: loss is (nan|inf) at step 1; stopped without saving", err)
    assert not (tmp_path / "pooled_text_proj.safetensors").exists()




def test_lr_sweep_picks_the_lowest_validation_loss_and_records_every_candidate(anima, tiny_dir, tmp_path):
    """The rule: the lowest final validation loss wins, and sweep.csv holds each short run's last validation row.
    Known answer for one candidate: at lr 1e-9 the zero-initialised source barely moves, so its loss is the
    no-source student's."""
    from anima_probe.training.sweep import lr_sweep

    chosen = lr_sweep(FAST, tmp_path / "run", tiny_dir / "captions.csv", anima, [1e-9, 3e-2], 4, progress=False)
    with open(tmp_path / "run" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == [1e-9, 3e-2]
    losses = [float(r["val_loss"]) for r in rows]
    best = losses.index(min(losses))
    assert chosen.lr == [1e-9, 3e-2][best] and chosen.steps == FAST.steps
    assert [r["chosen"] for r in rows] == ["1" if i == best else "0" for i in range(2)]
    for lr, row in zip(("1e-09", "0.03"), rows, strict=True):
        with open(tmp_path / "run" / "sweep" / f"lr{lr}" / "val.csv", newline="") as f:
            assert float(list(csv.DictReader(f))[-1]["val_loss"]) == float(row["val_loss"])
    tiny = json.loads((tmp_path / "run" / "sweep" / "lr1e-09" / "summary.json").read_text())
    assert losses[0] == pytest.approx(tiny["val_nosource"]["val_loss"], rel=1e-3)
    assert not (tmp_path / "run" / "sweep" / "lr0.03" / "data.pt").exists()  # one shared data cache
