"""The `anima-probe` command line: one entry point for the suite's jobs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: every file is local

from anima_probe.pipeline import gate, report  # noqa: E402  (light modules: argument definitions of report / regress)

# --dtype name -> torch dtype attribute: the one table (torch is imported only by the commands that load a model)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def _tiny(args) -> int:
    from anima_probe.model.tiny import write_tiny

    out = write_tiny(Path(args.out_dir), prefix=args.prefix, seed=args.seed)
    print(f"wrote tiny Anima twin to {out}")
    return 0


def _demo(args) -> int:
    """Load a model folder (default: the bundled toy world), encode prompts, sample a grid with CFG."""
    import torch

    from anima_probe.guidance.samplers import cfg_velocity, initial_noise, sample_euler, simple_sigmas
    from anima_probe.model.anima import load_anima
    from anima_probe.model.text import encode_prompts
    from anima_probe.pipeline.figures import new_figure, save_figure

    anima = load_anima(args.model, with_vae=args.model is not None)
    prompts = [p.strip() for p in args.prompts.split("|")]
    tc = encode_prompts(anima, prompts + [""])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)
    x = initial_noise(anima, len(prompts), args.size, args.seed)
    velocity = cfg_velocity(anima.velocity, cond, uncond, args.cfg)

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

    from anima_probe.pipeline.experiment import apply_overrides
    from anima_probe.toyworld.train import PROFILES, train_toy_world

    cfg = apply_overrides(PROFILES[args.profile], args.overrides)
    t0 = time.time()
    model_dir = train_toy_world(Path(args.out_dir), cfg, device=args.device)
    print(f"toy world ({args.profile} profile, {cfg.steps} steps x batch {cfg.batch_size}) trained in "
          f"{time.time() - t0:.0f} s -> {model_dir}")
    return 0


def _sample(args) -> int:
    """Mod-guided sampling: a grid of guidance weights (rows) x CFG scales (columns) into a numbered run folder."""

    from anima_probe.guidance import families
    from anima_probe.guidance import guided as gs
    from anima_probe.guidance.samplers import initial_noise
    from anima_probe.guidance.schedules import Schedule
    from anima_probe.model.anima import load_anima
    from anima_probe.model.clip import load_clip
    from anima_probe.pipeline.provenance import git_hash, sha256_file
    from anima_probe.pipeline.samples import grid_figure, write_sample_run

    dtype = _torch_dtype(args.dtype)
    anima = load_anima(args.model, device=args.device, dtype=dtype, with_vae=args.model is not None)
    source = families.load_source(args.proj, anima)
    family, prompts = families.family_of(source), [p.strip() for p in args.prompts.split("|")]
    guidance = gs.Guidance(0.0, Schedule.parse(args.schedule), args.final_w,
                           None if args.rows == "auto" else args.rows)
    clip = load_clip(args.clip, device=args.device) if args.clip and family.needs_clip else None
    gp = gs.prepare(anima, source, prompts, args.pos, args.neg, args.negative, clip=clip)
    ws = [None if w.strip() == "off" else float(w) for w in args.w.split(",")]
    cfgs = [float(c) for c in args.cfg.split(",")]
    noise = initial_noise(anima, len(prompts), args.size, args.seed)
    images = gs.sample_grid(anima, gp, ws, cfgs, guidance, noise, steps=args.steps, shift=args.shift,
                            sampler=args.sampler, seed=args.seed, progress=not args.quiet)
    rows = ["no modulation" if w is None else f"w={w:g}" for w in ws]
    fig = grid_figure(images, rows, [f"CFG {c:g}" for c in cfgs])
    settings = {k: v for k, v in vars(args).items() if k != "fn"} | {
        "family": family.name, "row_policy": guidance.policy(family.name).value, "schedule": guidance.schedule.text(),
        "w_values": ws, "cfg_values": cfgs, "model": anima.name, "proj_sha256": sha256_file(args.proj),
        "git": git_hash(), "grid": "rows = w (None: no modulation), columns = CFG scale, prompts side by side"}
    run_dir = write_sample_run(args.out, images, settings, fig)
    print(f"{family.name} ({settings['row_policy']}, {settings['schedule']}): {len(ws)} w x {len(cfgs)} CFG x "
          f"{len(prompts)} prompts -> {run_dir}")
    return 0


def _list(args) -> int:
    from anima_probe.pipeline.experiment import discover

    for exp in discover().values():
        kind = "text only" if not exp.needs_dit else "DiT"
        print(f"{exp.name:<22} v{exp.version:<3} {kind:<9} {exp.question}")
    return 0


def _run(args) -> int:

    from anima_probe.model.anima import load_anima
    from anima_probe.pipeline.experiment import discover, get, run
    from anima_probe.pipeline.runs import read_run

    registry = discover()
    names = list(registry) if args.experiment == "all" else [get(args.experiment, registry).name]
    files = {k: getattr(args, k) for k in ("dit", "text_encoder", "vae", "qwen_tokenizer", "t5_tokenizer")
             if getattr(args, k)}
    dtype = _torch_dtype(args.dtype)
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


def _distill(args) -> int:
    """Distil a modulation source (family pooled_text_proj or cosmos) from the frozen model; rerun to resume."""
    from accelerate import Accelerator

    from anima_probe.model.anima import load_anima
    from anima_probe.model.clip import load_clip
    from anima_probe.pipeline.experiment import apply_overrides
    from anima_probe.training.distill import DistillConfig, TrainingInterrupted, distill
    from anima_probe.training.loop import NonFiniteLoss

    cfg = apply_overrides(DistillConfig(), args.overrides)
    accelerator = Accelerator(cpu=args.device == "cpu")  # one process, or one per GPU under `accelerate launch`
    dtype = _torch_dtype(args.dtype)
    anima = load_anima(args.model, device=accelerator.device, dtype=dtype, with_vae=cfg.data == "images")
    clip = load_clip(args.clip, args.clip_tokenizer, device=accelerator.device) if args.clip else None
    try:
        path = distill(cfg, args.out, args.captions, anima, clip, accelerator, progress=not args.quiet)
    except (TrainingInterrupted, NonFiniteLoss) as err:
        print(f"anima-probe distill: {err}", file=sys.stderr)
        return 130 if isinstance(err, TrainingInterrupted) else 1
    if accelerator.is_main_process:
        print(f"{cfg.family}: {path}  (loss curve, validation and checkpoint in {args.out})")
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
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "positive-control-cpu", "positive-control-gpu"],
                   help="training budget; positive-control-*: with the pooled modulation path (toyworld/train.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", help="ToyConfig overrides key=value, e.g. steps=200")
    p.set_defaults(fn=_train_toy)
    p = sub.add_parser("sample", help="modulation-guided sampling: a w x CFG grid into a numbered run folder")
    p.add_argument("--proj", required=True, help="modulation source: pooled_text_proj .safetensors or cosmos .pt")
    p.add_argument("--model", default=None, help="model folder (default: the bundled toy world)")
    p.add_argument("--clip", default=None, help="CLIP-L text model file or folder (a family that reads CLIP: cosmos)")
    p.add_argument("--prompts", default="1girl, solo, @kiri_ama|scenery, landscape, no humans, @neon_yoru",
                   help="prompts separated by |")
    p.add_argument("--pos", default="absurdres, highres, masterpiece, best quality, score_7, score_8, score_9",
                   help="p+ of Eq. 3 (default: the proposal's)")
    p.add_argument("--neg", default="worst quality, low quality, score_1, score_2, score_3", help="p- of Eq. 3")
    p.add_argument("--negative", default="", help="the CFG negative prompt (uncond row)")
    p.add_argument("--w", default="off,0,3", help="guidance weights, comma-separated grid rows; off = no modulation")
    p.add_argument("--cfg", default="1,4", help="CFG scales (ComfyUI convention), comma-separated grid columns")
    p.add_argument("--schedule", default="uniform", help="uniform | step:START | interval:START:END] (end "
                   "inclusive) | interval:START:END) (end exclusive) | a profile: sorryhyun, anzhc, ...")
    p.add_argument("--final-w", type=float, default=0.0, help="final-layer weight (pooled_text_proj only)")
    p.add_argument("--rows", default="auto", choices=["auto", "both", "cond-only", "official", "per-row-base"],
                   help="what the CFG uncond row gets (auto: the family's own port)")
    p.add_argument("--sampler", default="euler", choices=["euler", "er_sde"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--out", default="results", help="where run folders go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_sample)
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(fn=_list)
    p = sub.add_parser("run", help="run an experiment (or all) into a new numbered folder under results/")
    p.add_argument("experiment", help="an experiment name from `anima-probe list`, or all")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (one experiment only)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled toy world)")
    for role in ("dit", "text-encoder", "vae", "qwen-tokenizer", "t5-tokenizer"):
        p.add_argument(f"--{role}", default=None, help=f"the {role.replace('-', ' ')} file or folder (overrides --model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--results", default="results", help="where run folders go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_run)
    p = sub.add_parser("distill", help="train a modulation source by distillation (resumable; several processes: "
                       "accelerate launch --multi_gpu, or torchrun --nproc_per_node N on CPUs)")
    p.add_argument("captions", help="caption set (.csv/.jsonl; an image column for data=images)")
    p.add_argument("overrides", nargs="*", help="DistillConfig overrides key=value, e.g. family=cosmos steps=4000")
    p.add_argument("--out", required=True, help="run folder: rerunning with the same folder resumes")
    p.add_argument("--model", default=None, help="model folder (default: the bundled toy world)")
    p.add_argument("--clip", default=None, help="CLIP-L text model file or folder (family cosmos)")
    p.add_argument("--clip-tokenizer", default=None, help="CLIP tokenizer folder (default: found next to --clip)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (the process's GPU under accelerate launch)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="the frozen model's dtype")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_distill)
    p = sub.add_parser("report", help="rerun stale experiments, execute notebooks/ -> reports/*.md + index")
    report.add_arguments(p)
    p.set_defaults(fn=report.cli)
    p = sub.add_parser("regress", help="the regression gate: latest runs vs reports/baselines/<tier>/")
    gate.add_arguments(p)
    p.set_defaults(fn=gate.cli)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`run exp --quiet k=v`), which argparse leaves unparsed
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "experiment", None) == "all" and args.overrides:
        parser.error("overrides apply to one experiment; run them one at a time")
    try:
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError) as err:  # bad input: a clear line, not a traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"anima-probe {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
