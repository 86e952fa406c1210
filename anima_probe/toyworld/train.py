"""Can a tiny Anima learn a world whose factors we planted? Train one from scratch, the way Anima's trainers do.

Rectified flow exactly as diffusion-pipe / kohya / sorryhyun train Anima: target = noise − x0, sigma ~
sigmoid(N(0, 1)) (logit-normal), sigma fed as the timestep, caption dropout to the empty prompt (for CFG). The Qwen3
encoder is random and frozen (as Anima's is frozen); the LLM adapter and the DiT train together. Pixel space: the
DiT works on 32x32 RGB in [-1, 1] directly — a tiny VAE would itself need training and would blur exactly the planted
degradations (noise, banding, blockiness) that the quality experiments must see. The result is written in the real
file formats and layout, and loads through `load_anima(DIR)` like the real model. With ``pooled_path`` the world is
the positive control of issue 11 (a text-aware modulation path that carries quality by construction; see
`toyworld.positive_control`), and its projection is written beside the model folder in the community format.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anima_probe.errors import InputError, UsageError
from anima_probe.guidance.modulation import inject
from anima_probe.guidance.sources import save_pooled_text_proj
from anima_probe.model.anima import Anima, _freeze, build_adapter, build_transformer, dit_velocity
from anima_probe.model.dit_file import AdapterConfig, DiTConfig
from anima_probe.model.flow import add_noise, logit_normal_sigmas, velocity_target
from anima_probe.model.text import PromptTokens, crossattn, qwen_states, tokenize_prompts
from anima_probe.model.tiny import dit_file_state, tiny_qwen3, write_dit_file, write_qwen3_file
from anima_probe.model.tokenization import QWEN_DIR_NAME, T5_DIR_NAME, load_tokenizers, train_tiny_tokenizers
from anima_probe.pipeline.manifests import load_prompt_sets
from anima_probe.pipeline.vocabulary import write_training_vocabulary
from anima_probe.toyworld import positive_control as pc
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
    pooled_path: bool = False  # the positive control: max-pooled crossattn_emb -> MLP -> + t_embedding_norm output
    pooled_dropout: float = 0.1  # the path's own dropout to the empty prompt's pooled input
    strip_quality: float = 0.0  # share of images whose quality reaches the model only through the modulation
    planted_positive: str = ""  # the Eq. 3 pair (p+, p-) that plants a stripped image's quality in its modulation
    planted_negative: str = ""

    def __post_init__(self):
        if self.strip_quality and not self.pooled_path:
            raise UsageError("strip_quality > 0 needs pooled_path=True: the stripped tags would reach no input")
        if self.strip_quality and not (self.planted_positive and self.planted_negative):
            raise UsageError("strip_quality > 0 needs planted_positive and planted_negative: the Eq. 3 pair that "
                             "carries a stripped image's quality")

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
# The positive-control profiles train the same world with the pooled path, and on half of the images the quality tags
# moved out of the caption into an Eq. 3 term with the proposal's p+ / p- (toyworld/positive_control.py). A step costs
# 1.00x a plain one (the adapter runs on 3 more rows; benchmarks/positive_control_budget.py, data/toyworld/
# positive_control/train.json), so the cpu variant's 1,100 steps project 36 of the 45 minutes on an idle machine.
_PAIR = load_prompt_sets()["guidance"]
_POSITIVE = {"pooled_path": True, "strip_quality": 0.5, "planted_positive": _PAIR["positive"],
             "planted_negative": _PAIR["negative"]}
PROFILES = {
    "gpu": ToyConfig(steps=3500),
    "cpu": ToyConfig(steps=1200, batch_size=64, warmup=100, checkpoint_every=200, bf16=False, ema_decay=0.995),
}
PROFILES |= {"positive-control-gpu": replace(PROFILES["gpu"], **_POSITIVE),
             "positive-control-cpu": replace(PROFILES["cpu"], steps=1100, **_POSITIVE)}


@dataclass
class _Data:
    """The training set on the device: images, the frozen Qwen states of every text and which text is whose."""

    x0: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    hidden: torch.Tensor  # (T, Lq, Dq) Qwen states of every text; the last row is the empty prompt
    tok: PromptTokens  # T rows
    text_row: torch.Tensor  # (N,) long: the text image i reads (its caption, or stripped)
    planted: torch.Tensor  # (N,) Eq. 3 weight of image i's quality (0 where its caption keeps the tags)
    pair: torch.Tensor  # (0,) or (2,) long: the rows of the planted p+, p-

    @property
    def empty(self) -> int:
        return self.hidden.shape[0] - 1


def _data(cfg: ToyConfig, model_dir: Path, device):
    """The data, the frozen Qwen3 and the T5 vocabulary size; tokenizers are trained on the full captions only."""
    world = generate(cfg.n_images, cfg.seed, cfg.image_size)
    captions = [w.caption for w in world]
    tt = pc.training_texts(world, cfg.strip_quality, cfg.seed, (cfg.planted_positive, cfg.planted_negative))
    x0 = torch.from_numpy(np.stack([w.image for w in world])).permute(0, 3, 1, 2) * 2 - 1  # (N, 3, H, W)
    qdir, tdir = train_tiny_tokenizers(model_dir, captions, qwen_vocab=cfg.qwen_vocab, t5_vocab=cfg.t5_vocab,
                                       seed=cfg.seed)
    qtok, ttok = load_tokenizers(qdir, tdir)
    qwen = _freeze(tiny_qwen3(len(qtok), cfg.seed, cfg.qwen_dims()).to(device))
    tok = tokenize_prompts(qtok, ttok, tt.texts).to(device)
    with torch.no_grad():
        hidden = torch.cat([qwen_states(qwen, tok[i : i + 1024]) for i in range(0, len(tt.texts), 1024)])
    data = _Data(x0.to(device), hidden, tok, torch.from_numpy(tt.rows).to(device),
                 torch.from_numpy(tt.planted).float().to(device), torch.tensor(tt.pair, dtype=torch.long, device=device))
    return data, qwen, len(ttok)


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
    nets = {"transformer": transformer, "adapter": adapter}
    if cfg.pooled_path:
        nets["projection"] = pc.new_projection(cfg.hidden, cfg.text_dim, cfg.seed).to(device)
    return {k: m.train().requires_grad_(True) for k, m in nets.items()}


def _loss(cfg, net: Anima, projection, data: _Data, step, device):
    g = training.step_generator(cfg.seed, step, device)
    idx = torch.randint(0, data.x0.shape[0], (cfg.batch_size,), generator=g, device=device)  # (B,)
    drop = torch.rand(cfg.batch_size, generator=g, device=device) < cfg.caption_dropout
    text_idx = torch.where(drop, data.empty, data.text_row[idx])
    sigma = logit_normal_sigmas(cfg.batch_size, generator=g, device=device)  # (B,)
    noise = torch.randn(data.x0[idx].shape, generator=g, device=device)  # (B, 3, H, W)
    rows, modulation = text_idx, None
    if projection is not None:  # drawn last, so the plain world's random stream is unchanged
        pdrop = torch.rand(cfg.batch_size, generator=g, device=device) < cfg.pooled_dropout
        rows = torch.cat([text_idx, data.pair, text_idx.new_tensor([data.empty])])  # + [p+, p-] + ""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    B = cfg.batch_size
    with autocast:
        ctx = crossattn(net.adapter, data.hidden[rows], data.tok[rows])  # (B [+ 3], 512, Dt)
        if projection is not None:
            pooled = pc.pooled_input(ctx, data.tok.t5_mask[rows])  # (B + 3, Dt)
            own = torch.where(pdrop[:, None], pooled[-1], pooled[:B])  # (B, Dt) a dropped path reads ""
            planted = torch.where(drop | pdrop, 0.0, data.planted[idx])  # (B,) no planted term without the path
            modulation = pc.planted_modulation(projection, own, planted, pooled[B:-1] if len(data.pair) else None,
                                               net.num_blocks)
        with inject(net, modulation) if modulation is not None else contextlib.nullcontext():
            v = dit_velocity(net.transformer, add_noise(data.x0[idx], noise, sigma), sigma, ctx[:B])
    return F.mse_loss(v.float(), velocity_target(data.x0[idx], noise))


def train_toy_world(out_dir: Path, cfg: ToyConfig = ToyConfig(), device: str = "cpu", progress: bool = True) -> Path:
    """Train (or resume) into `out_dir/run/`, then write the model folder `out_dir/model/`. Returns the latter."""
    out_dir, device = Path(out_dir), torch.device(device)
    run, model_dir = out_dir / "run", out_dir / "model"
    ckpt_path = run / "checkpoint.pt"
    # A checkpoint of another config is refused before any work (drawing and encoding the image set takes minutes)
    if (state := training.load_checkpoint(ckpt_path, device)) is not None and state["config"] != asdict(cfg):
        changed = sorted(k for k, v in asdict(cfg).items() if state["config"].get(k) != v)
        raise InputError(f"{ckpt_path}: written for another config (differs in {', '.join(changed)}); use a new "
                         "output folder or the same config")
    run.mkdir(parents=True, exist_ok=True)
    data, qwen, t5_vocab = _data(cfg, model_dir, device)
    nets = _models(cfg, t5_vocab, device)
    ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in nets.items()}
    params = [p for m in nets.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if state is not None:
        for k in nets:
            nets[k].load_state_dict(state[k])
            ema[k].load_state_dict(state["ema_" + k])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    net = Anima(nets["transformer"], nets["adapter"], cfg.dit())  # what the injection hooks resolve against
    log = training.CSVLog(run / "loss.csv", ["step", "loss", "lr", "seconds"], resume_step=start)
    t0 = time.time()
    for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train toy world",
                     disable=not progress):
        lr = cfg.lr * training.warmup_cosine(step, cfg.steps, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _loss(cfg, net, nets.get("projection"), data, step, device)
        training.check_finite(loss, step, ckpt_path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k in nets:
            training.ema_update(ema[k], nets[k], cfg.ema_decay)
        log.write(step=step, loss=f"{loss.item():.6f}", lr=f"{lr:.3e}", seconds=f"{time.time() - t0:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            training.save_checkpoint(ckpt_path, {
                "config": asdict(cfg), "step": step + 1, **{k: m.state_dict() for k, m in nets.items()},
                **{"ema_" + k: m.state_dict() for k, m in ema.items()}, "optimizer": opt.state_dict()})
    return save_model_folder(model_dir, ema, cfg, qwen)


def save_model_folder(model_dir: Path, nets: dict, cfg: ToyConfig, qwen) -> Path:
    """The trained EMA weights in the published layout and dtype (bf16 DiT single file, `net.` prefix) + Qwen3, and
    for the positive control its projection in the community format (`positive_control.PROJECTION_FILE`)."""
    _write_dit(model_dir, nets, cfg)
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
    nets = _models(cfg, state["adapter"]["embed.weight"].shape[0], torch.device("cpu"))
    for k, m in nets.items():
        m.load_state_dict(state[("ema_" if ema else "") + k])
    shutil.copytree(out_dir / "model", model_dir, dirs_exist_ok=True)
    _write_dit(model_dir, nets, cfg)
    return model_dir


def _write_dit(model_dir: Path, nets: dict, cfg: ToyConfig) -> None:
    state = dit_file_state(nets["transformer"], nets["adapter"], cfg.dit())
    state = {k: v.to(torch.bfloat16).cpu() for k, v in state.items()}
    write_dit_file(model_dir / DIT_FILE, state, "net.", {"format": "anima-toyworld", "config": json.dumps(asdict(cfg))})
    if "projection" in nets:  # the DiT file has no key for it (Anima has no such path): the community's own file
        save_pooled_text_proj(nets["projection"], model_dir / pc.PROJECTION_FILE)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "vocabulary":
        raise SystemExit("usage: python -m anima_probe.toyworld.train vocabulary MODEL_DIR  (a toy model folder)")
    folder = Path(sys.argv[2])
    config = ToyConfig(**json.loads((folder / "toyworld.json").read_text(encoding="utf-8")))
    print(f"wrote {write_vocabulary(folder, config)}")
