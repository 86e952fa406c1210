"""The `anima-probe` command line: one entry point for the suite's jobs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: every file is local


def _tiny(args) -> int:
    from anima_probe.tiny import write_tiny

    out = write_tiny(Path(args.out_dir), prefix=args.prefix, seed=args.seed)
    print(f"wrote tiny Anima twin to {out}")
    return 0


def _demo(args) -> int:
    """Load a model folder (default: the bundled toy world), encode prompts, sample a grid with CFG."""
    import torch

    from anima_probe.model import load_anima
    from anima_probe.runs import new_figure, save_figure
    from anima_probe.sampling import cfg_combine, sample_euler, simple_sigmas
    from anima_probe.text import encode_prompts

    anima = load_anima(args.model, with_vae=args.model is not None)
    prompts = [p.strip() for p in args.prompts.split("|")]
    tc = encode_prompts(anima, prompts + [""])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)
    side = args.size // (8 if anima.vae is not None else 1)
    x = torch.randn(len(prompts), anima.dit_config.in_channels, side, side,
                    generator=torch.Generator().manual_seed(args.seed))

    def velocity(x_t, sigma):
        return cfg_combine(anima.velocity(x_t, sigma, cond), anima.velocity(x_t, sigma, uncond), args.cfg)

    with torch.no_grad():
        images = anima.decode(sample_euler(velocity, x, simple_sigmas(args.steps)))
    fig = new_figure(figsize=(2.2 * len(prompts), 2.6))
    for i, p in enumerate(prompts):
        ax = fig.add_subplot(1, len(prompts), i + 1)
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_title(p[:28], fontsize=6)
        ax.axis("off")
    save_figure(fig, Path(args.out))
    print(f"model {anima.name}: {len(prompts)} samples, {args.steps} Euler steps, CFG {args.cfg} -> {args.out}")
    return 0


def _train_toy(args) -> int:
    import time

    from anima_probe.experiment import apply_overrides
    from anima_probe.toyworld.train import PROFILES, train_toy_world

    cfg = apply_overrides(PROFILES[args.profile], args.overrides)
    t0 = time.time()
    model_dir = train_toy_world(Path(args.out_dir), cfg, device=args.device)
    print(f"toy world ({args.profile} profile, {cfg.steps} steps x batch {cfg.batch_size}) trained in "
          f"{time.time() - t0:.0f} s -> {model_dir}")
    return 0


def _list(args) -> int:
    from anima_probe.experiment import discover

    for exp in discover().values():
        kind = "text only" if not exp.needs_dit else "DiT"
        print(f"{exp.name:<22} v{exp.version:<3} {kind:<9} {exp.question}")
    return 0


def _run(args) -> int:
    import torch

    from anima_probe.experiment import discover, get, run
    from anima_probe.model import load_anima
    from anima_probe.runs import read_run

    registry = discover()
    names = list(registry) if args.experiment == "all" else [get(args.experiment, registry).name]
    files = {k: getattr(args, k) for k in ("dit", "text_encoder", "vae", "qwen_tokenizer", "t5_tokenizer")
             if getattr(args, k)}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    anima = load_anima(args.model, device=args.device, dtype=dtype, with_vae=False, **files)
    for name in names:
        overrides = args.overrides if args.experiment != "all" else []
        run_dir = run(name, overrides, anima=anima, results=args.results, progress=not args.quiet, registry=registry)
        record = read_run(run_dir)
        print(f"{name}: {run_dir}")
        for key, value in record.metrics.items():
            arrow = "^" if record.higher_is_better[key] else "v"
            print(f"  {key:<40} {value:>10.4f} {arrow}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anima-probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tiny", help="write a tiny Anima model folder in the real file formats")
    p.add_argument("out_dir")
    p.add_argument("--prefix", default="net.", choices=["net.", "model.diffusion_model.", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_tiny)
    p = sub.add_parser("demo", help="sample a prompt grid from a model folder (default: the toy world)")
    p.add_argument("--model", default=None, help="model folder (default: data/toyworld/model)")
    p.add_argument("--prompts", default="score_9, masterpiece, 1girl, solo, @kiri_ama|"
                   "score_9, masterpiece, scenery, landscape, no humans, @neon_yoru|"
                   "score_1, worst quality, mecha, robot, no humans, @pop_kyu|"
                   "score_9, still life, fruit, no humans, @sumi_kuro")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/figures/toyworld_demo.png")
    p.set_defaults(fn=_demo)
    p = sub.add_parser("train-toy", help="train the tiny toy-world Anima from scratch (resumable)")
    p.add_argument("out_dir", help="run/ (checkpoints, loss.csv) and model/ (the model folder) go here")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu"], help="training budget (see toyworld/train.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", help="ToyConfig overrides key=value, e.g. steps=200")
    p.set_defaults(fn=_train_toy)
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(fn=_list)
    p = sub.add_parser("run", help="run an experiment (or all) into a new numbered folder under results/")
    p.add_argument("experiment", help="an experiment name from `anima-probe list`, or all")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (one experiment only)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled toy world)")
    for role in ("dit", "text-encoder", "vae", "qwen-tokenizer", "t5-tokenizer"):
        p.add_argument(f"--{role}", default=None, help=f"the {role.replace('-', ' ')} file or folder (overrides --model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--results", default="results", help="where run folders go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_run)
    args = parser.parse_args(argv)
    if getattr(args, "experiment", None) == "all" and args.overrides:
        parser.error("overrides apply to one experiment; run them one at a time")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
