"""Can a small LoRA teach the frozen toy model an artist it never saw? Train one, as Anima's LoRA trainers do.

The data are toy-world images of a novel style (`world.NOVEL_ARTISTS`, e.g. `@tsuki_hoshi`) captioned with its own
tag; a quarter of each batch (`prior_fraction`) are images of the twelve shipped artists with their captions
(DreamBooth's prior preservation), so the LoRA learns the tag rather than repainting every prompt. The objective is
the toy model's own (rectified flow, target noise - x0, sigma ~ sigmoid(N(0, 1)) fed as the timestep); the DiT and
the text path stay frozen and only the adapter trains (`kind`: `lora`, `tlora` or `hydra`). The run machinery is
the project's trainer's (`training.loop`): per-step generator (exact resume), warmup + cosine, EMA of the adapter,
atomic checkpoints, CSV log, NaN guard. The EMA adapter is written in its community format (kohya keys; HydraLoRA:
the baked file + `_moe`).

    .venv/bin/python -m anima_probe.adapters.train OUT_DIR kind=tlora
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anima_probe.adapters import hydra, tlora
from anima_probe.adapters.apply import inject, remove_lora
from anima_probe.adapters.lora import LoraWeights, save_lora
from anima_probe.adapters.names import default_targets
from anima_probe.model.anima import CROSSATTN_TOKENS, dit_velocity, load_anima
from anima_probe.model.flow import add_noise, logit_normal_sigmas, velocity_target
from anima_probe.model.text import encode_prompts
from anima_probe.toyworld.world import NOVEL_ARTISTS, generate
from anima_probe.training import loop as training

KINDS = ("lora", "tlora", "hydra")
ADAPTER = "novel_artist"


@dataclass(frozen=True)
class LoraTrainConfig:
    kind: str = "lora"
    artist: str = NOVEL_ARTISTS[0]
    rank: int = 8
    alpha: float = 8.0
    heads: int = 3  # HydraLoRA up-heads
    min_rank: int = 1  # T-LoRA R_min
    tlora_alpha: float = 1.0  # T-LoRA schedule exponent
    seed: int = 0
    n_images: int = 512  # images of the novel artist
    data_seed: int = 13  # their world seed (the toy model trained on seed 0)
    prior_fraction: float = 0.25  # share of each batch from the twelve shipped artists
    n_prior: int = 512
    prior_seed: int = 0  # the toy model's own training images (its first n_prior)
    # Sized from a measured step: batch 16 took ~1.5 s of CPU on one thread (forward + backward through the frozen
    # DiT; cross-attention over the 512 padded text rows is most of it) and the shared machine gave each run a
    # fraction of a core, so batch 8 x 300 steps (~0.75 s x 300 = ~4 CPU minutes idle, ~2,400 images seen).
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.0
    ema_decay: float = 0.98  # a ~50-step window; 0.98^300 leaves 0.2 % of the zero-update start
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.prior_fraction < 1.0:
            raise ValueError(f"prior_fraction must be in [0, 1), got {self.prior_fraction}")


@dataclass
class _Set:
    x0: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    ctx: torch.Tensor  # (N, L, D_text) crossattn_emb, trimmed to the longest caption (zeros past it)


def _encode_set(anima, images) -> _Set:
    rgb = torch.from_numpy(np.stack([im.image for im in images])).permute(0, 3, 1, 2)  # (N, 3, H, W) in [0, 1]
    parts = []
    for i in range(0, len(images), 256):  # chunks: the full 512-row encodings of all captions would be ~0.4 GB
        tc = encode_prompts(anima, [im.caption for im in images[i : i + 256]], progress=False)
        parts.append(tc.crossattn_emb[:, : int(tc.t5_mask.sum(1).max())])
    L = max(p.shape[1] for p in parts)
    ctx = torch.cat([F.pad(p, (0, 0, 0, L - p.shape[1])) for p in parts])  # (N, L, D)
    return _Set(anima.encode(rgb), ctx)  # pixel space for the toy model: [-1, 1]


def _data(anima, cfg: LoraTrainConfig) -> tuple[_Set, _Set | None]:
    novel = _encode_set(anima, generate(cfg.n_images, cfg.data_seed, artists=(cfg.artist,)))
    prior = _encode_set(anima, generate(cfg.n_prior, cfg.prior_seed)) if cfg.prior_fraction > 0 else None
    return novel, prior


def build_adapter(anima, cfg: LoraTrainConfig, name: str = ADAPTER):
    """Fresh trainable adapter layers (published name -> peft layer) and the T-LoRA hooks (or None)."""
    targets = default_targets(anima.dit_config)
    ranks, alphas = dict.fromkeys(targets, cfg.rank), dict.fromkeys(targets, cfg.alpha)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # peft initialises lora_A from the global generator
    if cfg.kind == "hydra":
        return hydra.inject_hydra(anima, ranks, alphas, name, cfg.heads, g), None
    layers = inject(anima, ranks, alphas, name)
    if cfg.kind == "lora":
        return layers, None
    tlora.orthogonal_init(layers, name, g)
    schedule = tlora.TLoraSchedule(cfg.rank, cfg.min_rank, cfg.tlora_alpha)
    return layers, tlora.TLora(anima.transformer, layers, name, schedule)


def adapter_state(layers: dict, name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """Every tensor of the adapter (parameters and HydraLoRA's gate buffers), by published module name."""
    return {f"{m}.{part}.{k}": v for m, layer in layers.items()
            for part, mod in (("lora_A", layer.lora_A[name]), ("lora_B", layer.lora_B[name]))
            for k, v in mod.state_dict(keep_vars=True).items()}  # the live tensors, not detached copies


def _batch(s: _Set, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = F.pad(s.ctx[idx], (0, 0, 0, CROSSATTN_TOKENS - s.ctx.shape[1]))  # (b, 512, D): zero rows are the sinks
    return s.x0[idx], ctx


def _loss(anima, cfg: LoraTrainConfig, novel: _Set, prior: _Set | None, step: int) -> torch.Tensor:
    g = training.step_generator(cfg.seed, step)
    n_prior = round(cfg.batch_size * cfg.prior_fraction) if prior is not None else 0
    x0, ctx = _batch(novel, torch.randint(0, len(novel.x0), (cfg.batch_size - n_prior,), generator=g))
    if n_prior:
        px, pctx = _batch(prior, torch.randint(0, len(prior.x0), (n_prior,), generator=g))
        x0, ctx = torch.cat([x0, px]), torch.cat([ctx, pctx])  # (B, 3, H, W), (B, 512, D)
    sigma = logit_normal_sigmas(cfg.batch_size, generator=g)  # (B,)
    noise = torch.randn(x0.shape, generator=g)  # (B, 3, H, W)
    v = dit_velocity(anima.transformer, add_noise(x0, noise, sigma), sigma, ctx)
    return F.mse_loss(v.float(), velocity_target(x0, noise))


def _export(anima, layers: dict, cfg: LoraTrainConfig, out_dir: Path, step: int) -> Path:
    """The adapter's current weights in its community format: `<artist>-<kind>.safetensors` (kohya keys)."""
    path = out_dir / f"{cfg.artist.lstrip('@')}-{cfg.kind}.safetensors"
    meta = {"artist": cfg.artist, "kind": cfg.kind, "step": str(step),
            "config": json.dumps(asdict(cfg), sort_keys=True)}
    if cfg.kind == "hydra":
        weights = hydra.hydra_weights(layers, ADAPTER)
        weights.lora.metadata |= meta
        return hydra.save_hydra(weights, path, anima.dit_config)[0]
    weights = LoraWeights({}, {}, {}, meta)
    for m, layer in layers.items():
        weights.down[m] = layer.lora_A[ADAPTER].weight.detach().clone()
        weights.up[m] = layer.lora_B[ADAPTER].weight.detach().clone()
        weights.alpha[m] = float(layer.lora_alpha[ADAPTER])
    if cfg.kind == "tlora":
        weights.metadata |= tlora.schedule_metadata(tlora.TLoraSchedule(cfg.rank, cfg.min_rank, cfg.tlora_alpha))
    return save_lora(weights, path, "kohya", anima.dit_config)


def _resume(ckpt: Path, cfg: LoraTrainConfig, live, ema, opt) -> int:
    if (state := training.load_checkpoint(ckpt)) is None:
        return 0
    if state["config"] != asdict(cfg):
        raise ValueError(f"{ckpt}: written for another config; use a new output folder or the same config")
    for target, key in ((live, "adapter"), (ema, "ema")):
        with torch.no_grad():
            for k, v in target.items():
                v.copy_(state[key][k])
    opt.load_state_dict(state["optimizer"])
    return state["step"]


def train_lora(out_dir: str | Path, cfg: LoraTrainConfig = LoraTrainConfig(), model: str | Path | None = None,
               progress: bool = True) -> Path:
    """Train (or resume) into `out_dir` (checkpoint.pt, loss.csv, train.json); returns the exported file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    anima = load_anima(model, with_vae=True)
    novel, prior = _data(anima, cfg)
    layers, hooks = build_adapter(anima, cfg)
    live = adapter_state(layers)
    params = [v for v in live.values() if v.requires_grad]
    ema = {k: v.detach().clone() for k, v in live.items()}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out_dir / "checkpoint.pt"
    start = _resume(ckpt, cfg, live, ema, opt)
    log = training.CSVLog(out_dir / "loss.csv", ["step", "loss", "lr", "seconds"], resume_step=start)
    t0, c0 = time.time(), time.process_time()
    for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.kind}",
                     disable=not progress):
        lr = cfg.lr * training.warmup_cosine(step, cfg.steps, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _loss(anima, cfg, novel, prior, step)
        training.check_finite(loss, step, ckpt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in live.items():  # EMA of parameters; buffers (gate sums) are copied as they are
                if v.requires_grad:
                    ema[k].lerp_(v, 1 - cfg.ema_decay)
                else:
                    ema[k].copy_(v)
        log.write(step=step, loss=f"{loss.item():.6f}", lr=f"{lr:.3e}", seconds=f"{time.time() - t0:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            training.save_checkpoint(ckpt, {"config": asdict(cfg), "step": step + 1, "ema": ema,
                                            "adapter": {k: v.detach() for k, v in live.items()},
                                            "optimizer": opt.state_dict()})
    wall, cpu = time.time() - t0, time.process_time() - c0
    with torch.no_grad():
        for k, v in live.items():
            v.copy_(ema[k])
    path = _export(anima, layers, cfg, out_dir, cfg.steps)
    if hooks is not None:
        hooks.remove()
    remove_lora(anima, ADAPTER)
    (out_dir / "train.json").write_text(json.dumps({
        "config": asdict(cfg), "file": path.name, "steps_this_run": cfg.steps - start, "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1), "threads": torch.get_num_threads()}, indent=2) + "\n")
    return path


def export_checkpoint(out_dir: str | Path, model: str | Path | None = None) -> Path:
    """Export the EMA adapter of a run's last checkpoint as `train_lora` would at its end: for a run stopped
    before its last step (the file's `step` metadata says which step it is)."""
    out_dir = Path(out_dir)
    if (state := training.load_checkpoint(out_dir / "checkpoint.pt")) is None:
        raise FileNotFoundError(f"{out_dir / 'checkpoint.pt'}: no checkpoint to export")
    cfg = LoraTrainConfig(**state["config"])
    anima = load_anima(model, with_vae=False, with_text=False)
    layers, hooks = build_adapter(anima, cfg)
    with torch.no_grad():
        for k, v in adapter_state(layers).items():
            v.copy_(state["ema"][k])
    path = _export(anima, layers, cfg, out_dir, state["step"])
    if hooks is not None:
        hooks.remove()
    remove_lora(anima, ADAPTER)
    return path


def plot_loss_curves(runs: dict[str, str | Path], path: str | Path, window: int = 20) -> Path:
    """Training loss of several runs (label -> run folder), as a `window`-step running mean."""
    from anima_probe.pipeline.figures import new_figure, save_figure

    fig = new_figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for label, run in runs.items():
        with open(Path(run) / "loss.csv") as f:
            rows = [float(r["loss"]) for r in csv.DictReader(f)]
        smooth = np.convolve(rows, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(rows)), smooth, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({window}-step mean)")
    ax.legend()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    from anima_probe.pipeline.experiment import apply_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("overrides", nargs="*", help="LoraTrainConfig overrides key=value, e.g. kind=hydra")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped toy world)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--export-checkpoint", action="store_true",
                        help="only export OUT_DIR's last checkpoint (EMA) in the community format")
    args = parser.parse_args(argv)
    if args.export_checkpoint:
        print(export_checkpoint(args.out_dir, args.model))
        return 0
    try:
        cfg = apply_overrides(LoraTrainConfig(), args.overrides)
    except (KeyError, ValueError) as err:
        parser.error(str(err).strip("'\""))
    torch.set_num_threads(args.threads)
    print(train_lora(args.out_dir, cfg, args.model, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
