"""Can a tiny Anima learn a world whose factors we planted? Train one from scratch, the way Anima's trainers do.

Rectified flow exactly as diffusion-pipe / kohya / sorryhyun train Anima: target = noise − x0, sigma ~
sigmoid(N(0, 1)) (logit-normal), sigma fed as the timestep, caption dropout to the empty prompt (for CFG). The Qwen3
encoder is random and frozen (as Anima's is frozen); the LLM adapter and the DiT train together. Pixel space: the
DiT works on 32x32 RGB in [-1, 1] directly — a tiny VAE would itself need training and would blur exactly the planted
degradations (noise, banding, blockiness) that the quality experiments must see. The result is written in the real
file formats and layout, and loads through `load_anima(DIR)` like the real model.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anima_probe.model.anima import _freeze, build_adapter, build_transformer, dit_velocity
from anima_probe.model.dit_file import AdapterConfig, DiTConfig
from anima_probe.model.flow import add_noise, logit_normal_sigmas, velocity_target
from anima_probe.model.text import crossattn, qwen_states, tokenize_prompts
from anima_probe.model.tiny import dit_file_state, tiny_qwen3, write_dit_file, write_qwen3_file
from anima_probe.model.tokenization import QWEN_DIR_NAME, T5_DIR_NAME, load_tokenizers, train_tiny_tokenizers
from anima_probe.pipeline.vocabulary import write_training_vocabulary
from anima_probe.toyworld.world import captions, generate
from anima_probe.training import loop as training

DIT_FILE = "diffusion_models/anima-toyworld.safetensors"
TEXT_ENCODER_FILE = "text_encoders/qwen3-toyworld.safetensors"


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    n_images: int = 12000
    image_size: int = 32
    steps: int = 6000
    batch_size: int = 256
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    checkpoint_every: int = 500
    hidden: int = 128  # small enough that CI can sample from it on 2 cores
    num_blocks: int = 5
    head_dim: int = 32
    text_dim: int = 96
    adapter_layers: int = 2
    qwen_hidden: int = 64
    qwen_vocab: int = 512
    t5_vocab: int = 384
    bf16: bool = True  # autocast on CUDA only

    def dit(self) -> DiTConfig:
        return DiTConfig(hidden=self.hidden, num_blocks=self.num_blocks, head_dim=self.head_dim,
                         mlp_hidden=4 * self.hidden, text_dim=self.text_dim, adaln_lora_dim=self.hidden // 3,
                         in_channels=3, out_channels=3, patch=2)

    def qwen_dims(self) -> dict:
        return {"hidden_size": self.qwen_hidden, "intermediate_size": 2 * self.qwen_hidden, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": self.qwen_hidden // 4}


# Named training budgets (DiT-style size dict, used as CLI choices). "gpu" is what the shipped model used (351 s on an
# H100). "cpu" is sized for the 45-minute budget of a 2-core machine: same architecture and data, a quarter of the
# batch, 1,200 steps (a batch-64 step takes about 2 s on 2 threads; benchmarks/toy_cpu_budget.py measures the whole
# run). Its EMA decay is shorter: at 0.999 the average still holds 0.999^1200 = 30 % of the initial (identity)
# weights at the last step, and a measured cpu run with it drew artists at 0.15 accuracy while its last raw weights
# reached 0.91 (data/toyworld/README.md). At 0.995 the window is ~200 steps and the initial share 0.2 %.
PROFILES = {
    "gpu": ToyConfig(steps=3500),
    "cpu": ToyConfig(steps=1200, batch_size=64, warmup=100, checkpoint_every=200, bf16=False, ema_decay=0.995),
}


def _data(cfg: ToyConfig, model_dir: Path, device):
    """Images, frozen Qwen states of every caption (+ the empty prompt, last row) and the tokenizers."""
    world = generate(cfg.n_images, cfg.seed, cfg.image_size)
    captions = [w.caption for w in world]
    x0 = torch.from_numpy(np.stack([w.image for w in world])).permute(0, 3, 1, 2) * 2 - 1  # (N, 3, H, W)
    qdir, tdir = train_tiny_tokenizers(model_dir, captions, qwen_vocab=cfg.qwen_vocab, t5_vocab=cfg.t5_vocab,
                                       seed=cfg.seed)
    qtok, ttok = load_tokenizers(qdir, tdir)
    qwen = _freeze(tiny_qwen3(len(qtok), cfg.seed, cfg.qwen_dims()).to(device))
    tok = tokenize_prompts(qtok, ttok, captions + [""]).to(device)
    with torch.no_grad():
        hidden = torch.cat([qwen_states(qwen, tok[i : i + 1024]) for i in range(0, len(captions) + 1, 1024)])
    return x0.to(device), hidden, tok, qwen, len(ttok)


def _models(cfg: ToyConfig, t5_vocab: int, device):
    torch.manual_seed(cfg.seed)
    transformer = build_transformer(cfg.dit(), meta=False).to(device)
    adapter = build_adapter(AdapterConfig(source_dim=cfg.qwen_hidden, model_dim=cfg.text_dim,
                                          num_layers=cfg.adapter_layers, head_dim=32, mlp_hidden=4 * cfg.text_dim,
                                          vocab=t5_vocab), meta=False).to(device)
    for m in (transformer, adapter):
        for name, p in m.named_parameters():
            if p.ndim == 1:
                torch.nn.init.ones_(p) if "norm" in name else torch.nn.init.zeros_(p)
            elif "embed" in name and p.ndim == 2 and m is adapter:
                torch.nn.init.normal_(p, std=1.0)
            else:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    # adaLN-Zero (DiT): every residual gate and the output head start at zero, so the network starts as identity
    for block in transformer.transformer_blocks:
        for norm in (block.norm1, block.norm2, block.norm3):
            torch.nn.init.zeros_(norm.linear_2.weight)
    torch.nn.init.zeros_(transformer.proj_out.weight)
    return transformer.train().requires_grad_(True), adapter.train().requires_grad_(True)


def _loss(cfg, transformer, adapter, x0, hidden, tok, step, device):
    g = training.step_generator(cfg.seed, step, device)
    N = x0.shape[0]
    idx = torch.randint(0, N, (cfg.batch_size,), generator=g, device=device)  # (B,)
    drop = torch.rand(cfg.batch_size, generator=g, device=device) < cfg.caption_dropout
    text_idx = torch.where(drop, torch.full_like(idx, N), idx)  # row N is the empty prompt
    sigma = logit_normal_sigmas(cfg.batch_size, generator=g, device=device)  # (B,)
    noise = torch.randn(x0[idx].shape, generator=g, device=device)  # (B, 3, H, W)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    with autocast:
        ctx = crossattn(adapter, hidden[text_idx], tok[text_idx])  # (B, 512, D_text)
        v = dit_velocity(transformer, add_noise(x0[idx], noise, sigma), sigma, ctx)
    return F.mse_loss(v.float(), velocity_target(x0[idx], noise))


def train_toy_world(out_dir: Path, cfg: ToyConfig = ToyConfig(), device: str = "cpu", progress: bool = True) -> Path:
    """Train (or resume) into `out_dir/run/`, then write the model folder `out_dir/model/`. Returns the latter."""
    out_dir, device = Path(out_dir), torch.device(device)
    run, model_dir = out_dir / "run", out_dir / "model"
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.pt"
    x0, hidden, tok, qwen, t5_vocab = _data(cfg, model_dir, device)
    transformer, adapter = _models(cfg, t5_vocab, device)
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (transformer, adapter)]
    params = [p for m in (transformer, adapter) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if (state := training.load_checkpoint(ckpt_path, device)) is not None:
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt_path}: written for another config; use a new output folder or the same config")
        for m, key in ((transformer, "transformer"), (adapter, "adapter"), (ema[0], "ema_transformer"),
                       (ema[1], "ema_adapter")):
            m.load_state_dict(state[key])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    log = training.CSVLog(run / "loss.csv", ["step", "loss", "lr", "seconds"], resume_step=start)
    t0 = time.time()
    for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train toy world",
                     disable=not progress):
        lr = cfg.lr * training.warmup_cosine(step, cfg.steps, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _loss(cfg, transformer, adapter, x0, hidden, tok, step, device)
        training.check_finite(loss, step, ckpt_path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        training.ema_update(ema[0], transformer, cfg.ema_decay)
        training.ema_update(ema[1], adapter, cfg.ema_decay)
        log.write(step=step, loss=f"{loss.item():.6f}", lr=f"{lr:.3e}", seconds=f"{time.time() - t0:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            training.save_checkpoint(ckpt_path, {
                "config": asdict(cfg), "step": step + 1, "transformer": transformer.state_dict(),
                "adapter": adapter.state_dict(), "ema_transformer": ema[0].state_dict(),
                "ema_adapter": ema[1].state_dict(), "optimizer": opt.state_dict()})
    return save_model_folder(model_dir, ema[0], ema[1], cfg, qwen)


def save_model_folder(model_dir: Path, transformer, adapter, cfg: ToyConfig, qwen) -> Path:
    """The trained EMA weights in the published layout and dtype (bf16 DiT single file, `net.` prefix) + Qwen3."""
    _write_dit(model_dir, transformer, adapter, cfg)
    write_qwen3_file(model_dir / TEXT_ENCODER_FILE, qwen.cpu())
    (model_dir / "toyworld.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    write_vocabulary(model_dir, cfg)
    return model_dir


def write_vocabulary(model_dir: Path, cfg: ToyConfig) -> Path:
    """The T5 ids the adapter trained on (every training caption, and the empty prompt of caption dropout) into
    ``model_dir/training_vocab.json``, so prompt sets can be checked against them (`anima_probe.pipeline.vocabulary`).
    For the shipped model, once: ``python -m anima_probe.toyworld.train vocabulary data/toyworld/model``."""
    _, t5 = load_tokenizers(model_dir / QWEN_DIR_NAME, model_dir / T5_DIR_NAME)
    texts = captions(cfg.n_images, cfg.seed) + ([""] if cfg.caption_dropout > 0 else [])
    source = (f"anima_probe.toyworld.world.captions(n={cfg.n_images}, seed={cfg.seed})"
              + (" + the empty prompt (caption dropout)" if cfg.caption_dropout > 0 else ""))
    return write_training_vocabulary(model_dir, t5, texts, source)


def checkpoint_model_folder(out_dir: Path, model_dir: Path, ema: bool = True) -> Path:
    """A model folder from a training run's last checkpoint (`out_dir/run/checkpoint.pt`): its EMA weights (what
    training ships) or, with ema=False, the last step's raw weights, to see what the EMA adds. The frozen text
    encoder and the tokenizers are copied from `out_dir/model`."""
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    ckpt = out_dir / "run" / "checkpoint.pt"
    if (state := training.load_checkpoint(ckpt)) is None:
        raise FileNotFoundError(f"{ckpt}: no checkpoint; train into {out_dir} first (anima-probe train-toy)")
    cfg = ToyConfig(**state["config"])
    transformer, adapter = _models(cfg, state["adapter"]["embed.weight"].shape[0], torch.device("cpu"))
    prefix = "ema_" if ema else ""
    transformer.load_state_dict(state[prefix + "transformer"])
    adapter.load_state_dict(state[prefix + "adapter"])
    shutil.copytree(out_dir / "model", model_dir, dirs_exist_ok=True)
    _write_dit(model_dir, transformer, adapter, cfg)
    return model_dir


def _write_dit(model_dir: Path, transformer, adapter, cfg: ToyConfig) -> None:
    state = {k: v.to(torch.bfloat16).cpu() for k, v in dit_file_state(transformer, adapter, cfg.dit()).items()}
    write_dit_file(model_dir / DIT_FILE, state, "net.", {"format": "anima-toyworld", "config": json.dumps(asdict(cfg))})


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "vocabulary":
        raise SystemExit("usage: python -m anima_probe.toyworld.train vocabulary MODEL_DIR  (a toy model folder)")
    folder = Path(sys.argv[2])
    config = ToyConfig(**json.loads((folder / "toyworld.json").read_text(encoding="utf-8")))
    print(f"wrote {write_vocabulary(folder, config)}")
