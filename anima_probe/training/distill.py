"""Can a pooled-text modulation source learn to stand in for cross-attention? The paper's Section-5 distillation.

Teacher: the frozen Anima with the real prompt's ``crossattn_emb``. Student: the same frozen DiT with the *empty*
prompt's ``crossattn_emb`` plus the modulation source fed the real prompt, injected by ``modulation.inject`` (the one
injection the guided sampler also uses). Loss: MSE between the two velocities on the same noised input, sigma drawn
logit-normal (optionally shifted). Only the source trains, in fp32 whatever the DiT's dtype. Any registered family
trains (``guidance/families.py``): ``pooled_text_proj`` (sorryhyun: max-pooled crossattn_emb -> D, added to every
block's and the final layer's ``embedded_timestep``) and ``cosmos`` (the paper: CLIP-L pooled -> 3D, ``scales[i] * m``
on block i's temb); their sources are in docs/modulation-guidance.md ("Section 5", "The two Anima ports").

A run is a folder: ``checkpoint/checkpoint.pt`` (atomic, exact resume: every step's batch, sigmas and noise are a
function of (seed, step) alone, so rerunning the same command continues the same trajectory), ``loss.csv``,
``val.csv``, ``loss.png``, ``summary.json`` and the trained source in its community file format. Ctrl-C and a
non-finite loss stop without touching the last good checkpoint. Several processes (``accelerate launch``) split
each global batch; gradients are averaged by DDP, so a run's trajectory does not depend on the process count.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anima_probe.errors import InputError, UsageError
from anima_probe.guidance import families
from anima_probe.guidance.families import POOLED_TEXT_PROJ
from anima_probe.guidance.modulation import Modulation, constant, inject
from anima_probe.model.flow import add_noise, logit_normal_sigmas
from anima_probe.pipeline.atomic import atomic_write_json
from anima_probe.pipeline.figures import new_figure, save_figure
from anima_probe.training import loop as training
from anima_probe.training import response
from anima_probe.training.data import DistillData, check_caption_set, check_lengths, encode_text, prepare_data

_VAL_STREAM = 104_729  # the fixed validation noise is drawn from its own seed, never from a training step's


@dataclass(frozen=True)
class DistillConfig:
    family: str = POOLED_TEXT_PROJ
    pooling: str = "max_padded"  # family pooled_text_proj: as the community pools crossattn_emb (zero pad rows in)
    data: str = "images"  # images: the caption set's images; teacher: x0 sampled by the teacher per caption
    resolution: int = 32  # pixels
    empty_prompt: str = "comfyui"
    steps: int = 1000
    batch_size: int = 16  # global: split across processes
    lr: float = 1e-4
    warmup: int = 50
    lr_floor: float = 0.1  # cosine down to 10 % (as sorryhyun's trainer)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    sigma_mean: float = 0.0
    sigma_std: float = 1.0
    sigma_shift: float = 1.0
    val_count: int = 32  # the caption set's last rows, never trained on
    val_sigmas: tuple[float, ...] = (0.1, 0.4, 0.7, 0.9)
    val_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    data_seed: int = 0  # teacher-sample noise
    teacher_steps: int = 20
    teacher_cfg: float = 4.0
    teacher_shift: float = 3.0
    gradient_checkpointing: bool = False
    response_pair: str = "proposal"  # p+ / p- of the distillation-quality probe (training/response.py)
    response_rows: int = 8  # validation captions the probe uses (each at every val sigma)

    def __post_init__(self):
        families.get(self.family)  # a registered family, or a ValueError naming the known ones
        if self.steps < 1 or self.batch_size < 1 or self.val_every < 1 or self.checkpoint_every < 1:
            raise InputError("steps, batch_size, val_every and checkpoint_every must be >= 1")
        if self.response_rows < 1:
            raise UsageError(f"response_rows={self.response_rows}: the probe needs at least one validation caption")
        response.quality_pair(self.response_pair)  # a known pair, or a UsageError naming the known ones


class Student(torch.nn.Module):
    """The trainable source and how its output becomes per-block vectors (one module, so DDP sees one forward)."""

    def __init__(self, source: torch.nn.Module, num_blocks: int):
        super().__init__()
        self.source, self.num_blocks = source, num_blocks
        self.family = families.family_of(source).name

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (B, P) -> (B, W) for a family with one vector for every block (pooled_text_proj), or (N, B, W)
        per-block ``scales[i] * P`` for one with per-block scales (cosmos)."""
        fam = families.get(self.family)
        out = fam.project(self.source, pooled)  # (B, W)
        if fam.block_scales is None:
            return out
        scales = fam.block_scales(self.source)  # (N, W), trained with the projection
        return torch.stack(fam.block_vectors(lambda i: out, self.num_blocks, scales=scales))  # (N, B, W)

    def modulation(self, out: torch.Tensor) -> Modulation:
        if families.get(self.family).block_scales is None:
            return constant(self.family, out, self.num_blocks)  # every block and the family's final layer
        return Modulation(self.family, tuple(out))  # block i: scales[i] * P; the final layer keeps the plain model


def new_source(cfg: DistillConfig, anima, pooled_dim: int) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the sources' default initialisers read the global generator
    return families.get(cfg.family).new_source(anima.dit_config.hidden, anima.num_blocks, pooled_dim)


@contextlib.contextmanager
def checkpointed_blocks(anima, enabled: bool):
    """Recompute each frozen block's activations in backward instead of keeping all of them (full-size runs)."""
    before = anima.transformer.gradient_checkpointing
    if enabled:
        anima.transformer.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled and not before:
            anima.transformer.disable_gradient_checkpointing()


@contextlib.contextmanager
def student_modulation(anima, student, pooled: torch.Tensor):
    """The source's vectors for ``pooled`` (B, P), injected while open. Keep it open through backward: checkpointed
    blocks recompute their forward then, and must see the same modulation."""
    out = student(pooled)
    with inject(anima, (student.module if hasattr(student, "module") else student).modulation(out)):
        yield


def student_velocity(anima, student, data: DistillData, x_t, sigma, pooled) -> torch.Tensor:
    """The empty prompt's cross-attention plus the source's modulation on the real prompt."""
    with student_modulation(anima, student, pooled):
        return anima.velocity(x_t, sigma, data.context().expand(x_t.shape[0], -1, -1))


def batch(cfg: DistillConfig, data: DistillData, step: int, rank: int, world: int, device):
    """This process's share of step ``step``'s global batch: (index (b,), sigma (b,), noise (b, C, h, w))."""
    if cfg.batch_size % world:
        raise InputError(f"batch_size={cfg.batch_size} must split evenly over {world} processes")
    g = training.step_generator(cfg.seed, step)  # drawn on the CPU: the same numbers on every device
    idx = torch.randint(0, data.n_train, (cfg.batch_size,), generator=g)
    sigma = logit_normal_sigmas(cfg.batch_size, g, cfg.sigma_mean, cfg.sigma_std, cfg.sigma_shift)
    noise = torch.randn((cfg.batch_size, *data.x0.shape[1:]), generator=g)
    part = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    return idx[part].to(device), sigma[part].float().to(device), noise[part].to(device)


def distill_loss(anima, student, data: DistillData, idx, sigma, noise, backward: Callable | None = None):
    """MSE(student v, teacher v) on one noised batch; ``backward(loss)``, if given, runs inside the injection."""
    x_t = add_noise(data.x0[idx], noise, sigma)  # (b, C, h, w)
    with torch.no_grad():
        teacher = anima.velocity(x_t, sigma, data.context(idx)).float()
    with student_modulation(anima, student, data.pooled[idx]):
        v = anima.velocity(x_t, sigma, data.context().expand(len(idx), -1, -1))
        loss = F.mse_loss(v.float(), teacher)
        if backward is not None:
            backward(loss)
    return loss


@dataclass
class Validation:
    """Fixed items, sigma grid and noise; the teacher's velocities computed once. This rank's share of the rows."""

    index: torch.Tensor  # (V,) data rows
    sigma: torch.Tensor  # (V,)
    x_t: torch.Tensor  # (V, C, h, w)
    teacher: torch.Tensor  # (V, C, h, w)
    grid: tuple[float, ...]
    nosource: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def make_validation(cfg: DistillConfig, anima, data: DistillData, rank: int, world: int) -> Validation:
    rows = torch.arange(data.n_train, len(data.captions))
    index = rows.repeat_interleave(len(cfg.val_sigmas))
    sigma = torch.tensor(cfg.val_sigmas, dtype=torch.float32).repeat(len(rows))
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + _VAL_STREAM)
    noise = torch.randn((len(index), *data.x0.shape[1:]), generator=g)
    mine = torch.arange(rank, len(index), world)
    index, sigma, noise = index[mine].to(data.x0.device), sigma[mine].to(data.x0.device), noise[mine].to(data.x0.device)
    x_t = add_noise(data.x0[index], noise, sigma)
    teacher = torch.cat([anima.velocity(x_t[i : i + 16], sigma[i : i + 16], data.context(index[i : i + 16]))
                         for i in range(0, len(index), 16)]).float()
    return Validation(index, sigma, x_t, teacher, tuple(cfg.val_sigmas))


@torch.no_grad()
def validate(anima, student, data: DistillData, val: Validation, accelerator, source: bool = True) -> dict:
    """Mean MSE over the grid and per sigma, summed over every rank's rows. ``source=False``: no modulation."""
    sums = torch.zeros(2 * len(val.grid), dtype=torch.float64, device=val.x_t.device)
    for i in range(0, len(val.index), 16):
        s, x_t, idx = val.sigma[i : i + 16], val.x_t[i : i + 16], val.index[i : i + 16]
        if source:
            v = student_velocity(anima, student, data, x_t, s, data.pooled[idx])
        else:
            v = anima.velocity(x_t, s, data.context().expand(len(idx), -1, -1))
        err = (v.float() - val.teacher[i : i + 16]).pow(2).flatten(1).mean(1)  # (b,)
        for j, g in enumerate(val.grid):
            hit = s == g
            sums[j] += err[hit].sum()
            sums[len(val.grid) + j] += hit.sum()
    sums = accelerator.reduce(sums, "sum")
    per = sums[: len(val.grid)] / sums[len(val.grid):]
    return {"val_loss": float(per.mean()), **{f"val@{g:g}": float(p) for g, p in zip(val.grid, per)}}


# ----------------------------------------------------------------------------------------------------------------
# The run


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the last good checkpoint is untouched; rerunning the same command resumes from it."""


def _config_state(cfg: DistillConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))  # tuples as lists: what a checkpoint reads back


@dataclass
class _Run:
    cfg: DistillConfig
    out: Path
    anima: object
    accelerator: object
    data: DistillData
    source: torch.nn.Module  # the unwrapped trainable module (fp32)
    student: torch.nn.Module  # Student, wrapped for DDP when several processes run
    opt: torch.optim.Optimizer
    val: Validation
    probe: response.ResponseProbe
    start: int
    log: training.CSVLog | None = None  # main process only: every row is written once
    val_log: training.CSVLog | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint" / "checkpoint.pt"

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _setup(cfg: DistillConfig, out: Path, captions, anima, clip, accelerator, progress: bool,
           long_captions: str, data_cache: Path | None) -> _Run:
    # every check that can fail runs before the first write: a rejected run leaves no folder and no data.pt
    check_lengths(anima, check_caption_set(cfg, captions, clip), Path(captions), long_captions)
    ckpt_path = out / "checkpoint" / "checkpoint.pt"
    state = training.load_checkpoint(ckpt_path)
    if state is not None and state["config"] != _config_state(cfg):
        raise InputError(f"{ckpt_path}: written for another config; use a new output folder or the same config")
    out.mkdir(parents=True, exist_ok=True)
    with accelerator.main_process_first():  # the main process computes the data; the others read its cache
        data = prepare_data(anima, cfg, captions, data_cache or out / "data.pt", clip, progress and accelerator.is_main_process)
    data = data.to(anima.device)
    source = new_source(cfg, anima, data.pooled.shape[1]).to(anima.device).float()
    opt = torch.optim.AdamW(source.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if state is not None:
        source.load_state_dict(state["source"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    student, opt = accelerator.prepare(Student(source, anima.num_blocks), opt)
    val = make_validation(cfg, anima, data, accelerator.process_index, accelerator.num_processes)
    run = _Run(cfg, out, anima, accelerator, data, source, student, opt, val, _probe(cfg, anima, data, clip), start)
    if run.main:
        atomic_write_json(out / "config.json", asdict(cfg))
        run.log = training.CSVLog(out / "loss.csv", ["step", "loss", "lr", "seconds"], resume_step=start)
        run.val_log = training.CSVLog(out / "val.csv", ["step", "val_loss", *[f"val@{g:g}" for g in cfg.val_sigmas],
                                                        *response.response_columns(cfg.val_sigmas)],
                                      resume_step=start + 1)  # its rows count completed steps: keep the resumed one
    return run


def _probe(cfg: DistillConfig, anima, data: DistillData, clip) -> response.ResponseProbe:
    """The distillation-quality probe on the first ``response_rows`` validation captions (every rank alike)."""
    rows = torch.arange(data.n_train, min(len(data.captions), data.n_train + cfg.response_rows))

    def encode(captions):
        crossattn, _, pooled = encode_text(anima, captions, cfg, clip, progress=False)
        return crossattn, pooled

    return response.make_probe(anima, encode, data.x0[rows.to(data.x0.device)], [data.captions[i] for i in rows],
                               *response.quality_pair(cfg.response_pair), cfg.val_sigmas, cfg.seed)


def _validate(run: _Run) -> dict:
    """Validation loss and the p+/p- response of the student against the teacher's, per sigma."""
    metrics = validate(run.anima, run.student, run.data, run.val, run.accelerator)
    return metrics | response.response_metrics(
        lambda x, s, pooled: student_velocity(run.anima, run.student, run.data, x, s, pooled), run.probe)


def _train_step(run: _Run, step: int) -> tuple[float, float]:
    """One optimisation step on this process's share of the global batch: (all-process mean loss, lr)."""
    cfg, acc = run.cfg, run.accelerator
    lr = cfg.lr * training.warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr_floor)
    for group in run.opt.param_groups:
        group["lr"] = lr
    parts = batch(cfg, run.data, step, acc.process_index, acc.num_processes, run.anima.device)
    run.opt.zero_grad(set_to_none=True)
    loss = distill_loss(run.anima, run.student, run.data, *parts, backward=acc.backward)
    mean = acc.reduce(loss.detach(), "mean")  # every process sees the same value, so all stop together on a NaN
    training.check_finite(mean, step, run.ckpt_path)  # before the update: the weights stay the last good ones
    acc.clip_grad_norm_(run.student.parameters(), cfg.grad_clip)
    run.opt.step()
    return float(mean), lr


def _after_step(run: _Run, step: int, loss: float, lr: float, t0: float) -> None:
    """Log, validate and checkpoint (atomically: a checkpoint is only ever replaced by a complete newer one)."""
    cfg, done = run.cfg, step + 1
    if run.main:
        run.log.write(step=step, loss=f"{loss:.8g}", lr=f"{lr:.4g}", seconds=f"{time.time() - t0:.2f}")
    if done % cfg.val_every == 0 or done == cfg.steps:
        metrics = _validate(run)
        if run.main:
            run.val_log.write(step=done, **_fmt(metrics))
    if run.main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
        training.save_checkpoint(run.ckpt_path, {"config": _config_state(cfg), "step": done,
                                                 "source": run.source.state_dict(),
                                                 "optimizer": run.opt.state_dict()})


def distill(cfg: DistillConfig, out_dir, captions, anima, clip=None, accelerator=None, progress: bool = True,
            on_step: Callable[[int, Student], None] | None = None, long_captions: str = "refuse",
            data_cache: Path | None = None) -> Path:
    """Train (or resume) into ``out_dir`` on caption set ``captions``; returns the trained source file.

    ``on_step(step, student)`` runs after every completed step (tests use it to interrupt or to poison weights).
    ``long_captions``: what a caption over the 512-token context gets (`data.check_lengths`). ``data_cache``: where
    the encoded data is kept (default ``out_dir/data.pt``; a learning-rate sweep shares one).
    """
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=anima.device.type == "cpu")
    run = _setup(cfg, Path(out_dir), captions, anima, clip, accelerator, progress, long_captions, data_cache)
    nosource = validate(anima, run.student, run.data, run.val, accelerator, source=False)
    if run.start == 0:
        metrics = _validate(run)
        if run.main:
            run.val_log.write(step=0, **_fmt(metrics))
    t0 = time.time()
    try:
        with checkpointed_blocks(anima, cfg.gradient_checkpointing):
            for step in tqdm(range(run.start, cfg.steps), initial=run.start, total=cfg.steps,
                             desc=f"distill {cfg.family}", disable=not (progress and run.main)):
                loss, lr = _train_step(run, step)
                _after_step(run, step, loss, lr, t0)
                if on_step is not None:
                    on_step(step, run.student)
    except KeyboardInterrupt:
        saved = training.load_checkpoint(run.ckpt_path)
        where = f"{run.ckpt_path} (step {saved['step']})" if saved else "none yet (a rerun starts over)"
        raise TrainingInterrupted(f"interrupted; the last good checkpoint is {where}. Rerun the same command "
                                  "to resume.") from None
    return _finish(run, nosource)


def _fmt(metrics: dict) -> dict:
    return {k: f"{v:.8g}" for k, v in metrics.items()}


def _floats(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if k != "step"}


def _fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """8 fixed random projections of every weight (float64): equal on every process iff the weights agree."""
    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, flat.numel(), generator=g, dtype=torch.float64).to(flat.device) @ flat  # (8,)


def _finish(run: _Run, nosource: dict) -> Path:
    """Check the processes agree, then (main process) write the source file, the figure and the summary."""
    prints = run.accelerator.gather(_fingerprint(run.source)[None]).cpu()  # (world, 8)
    if not torch.equal(prints, prints[:1].expand_as(prints)):
        raise RuntimeError(f"processes ended with different weights (fingerprints {prints.tolist()})")
    family = families.get(run.cfg.family)
    path = run.out / family.file_name
    if run.main:
        family.save(run.source.cpu(), path)
        run.source.to(run.anima.device)
        val_rows = run.val_log.read()
        summary = {"family": run.cfg.family, "steps": run.cfg.steps, "processes": run.accelerator.num_processes,
                   "rank_fingerprints": prints.tolist(), "val_nosource": nosource, "val_start": _floats(val_rows[0]),
                   "val_end": _floats(val_rows[-1]), "output": path.name}
        atomic_write_json(run.out / "summary.json", summary)
        save_figure(loss_figure(run.log.read(), val_rows, nosource["val_loss"], f"{run.cfg.family} distillation"),
                    run.out / "loss.png")
    run.accelerator.wait_for_everyone()
    return path


def loss_figure(train_rows: list[dict], val_rows: list[dict], nosource: float, title: str = "distillation"):
    """Left: train loss (raw and a running mean) and validation loss vs step, with the no-source student for scale.
    Right: the distillation-quality probe, cosine of the student's p+/p- response with the teacher's per sigma
    (solid) and its norm ratio (dashed)."""
    fig = new_figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    steps = [int(r["step"]) + 1 for r in train_rows]
    loss = torch.tensor([float(r["loss"]) for r in train_rows])
    ax.plot(steps, loss, color="0.75", lw=0.6, label="train (per step)")
    if len(loss) >= 10:
        k = max(5, len(loss) // 15)
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1).flatten()
        ax.plot(steps[k - 1:], smooth, color="C0", lw=1.2, label=f"train (mean of {k})")
    ax.plot([int(r["step"]) for r in val_rows], [float(r["val_loss"]) for r in val_rows], "o-", color="C1",
            ms=3, label="validation (fixed sigma grid + noise)")
    ax.axhline(nosource, color="C3", ls="--", lw=1, label="no source (empty prompt)")
    ax.set(xlabel="step", ylabel="MSE(student v, teacher v)", yscale="log", title=title)
    ax.legend(fontsize=7)
    resp = fig.add_subplot(1, 2, 2)
    val_steps = [int(r["step"]) for r in val_rows]
    for k, key in enumerate(k for k in val_rows[0] if k.startswith("resp_cos@")):
        sigma = key.split("@")[1]
        resp.plot(val_steps, [float(r[key]) for r in val_rows], "o-", ms=2, color=f"C{k}", label=f"sigma {sigma}")
        resp.plot(val_steps, [float(r[f"resp_norm@{sigma}"]) for r in val_rows], "--", color=f"C{k}", lw=0.8)
    resp.axhline(0.0, color="0.6", lw=0.6)
    resp.set(xlabel="step", ylabel="student vs teacher p+/p- response", title="cosine (solid), norm ratio (dashed)")
    resp.legend(fontsize=7)
    return fig
