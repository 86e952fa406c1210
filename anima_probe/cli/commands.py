"""What each `anima-probe` verb does: check its arguments, load what it needs once, do the work, write atomically.

Every verb checks its flags and output folders (`anima_probe.cli.checks`) and the device (`model.options`) before
it loads a model, so a doomed run stops in a second with one line instead of after the work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from anima_probe.cli import checks
from anima_probe.errors import UsageError
from anima_probe.model.options import check_device, model_kwargs


def tiny(args) -> int:
    from anima_probe.model.tiny import write_tiny_layout

    out = write_tiny_layout(Path(args.out_dir), args.layout, prefix=args.prefix, seed=args.seed)
    print(f"wrote tiny Anima twin ({args.layout} layout) to {out}")
    return 0


def _image_model(args, why: str):
    """The model with its VAE, refused (one line) when it can make no RGB images: a latent DiT without a VAE."""
    from anima_probe.model.anima import load_anima, require_images

    anima = load_anima(**model_kwargs(args), with_vae=True)
    require_images(anima, why)
    return anima


def demo(args) -> int:
    """Encode prompts, sample a grid with CFG, write grid.png + settings.json into a run folder (or --out)."""
    import torch

    from anima_probe.guidance.samplers import cfg_velocity, initial_noise, sample_euler, simple_sigmas
    from anima_probe.model.text import encode_prompts
    from anima_probe.pipeline.figures import new_figure
    from anima_probe.pipeline.samples import write_image_run

    prompts = [p.strip() for p in args.prompts.split("|") if p.strip()]
    if not prompts:
        raise UsageError(f"--prompts {args.prompts!r}: no prompt")
    checks.at_least("--steps", args.steps, 1), checks.at_least("--size", args.size, 8)
    checks.finite("--cfg", str(args.cfg), low=0.0)
    checks.writable_folder(args.out or args.results, "--out" if args.out else "--results")
    anima = _image_model(args, "demo draws images")
    tc = encode_prompts(anima, prompts + [""])
    cond, uncond = tc.crossattn_emb[:-1], tc.crossattn_emb[-1:].expand(len(prompts), -1, -1)
    x = initial_noise(anima, len(prompts), args.size, args.seed)
    velocity = cfg_velocity(anima.velocity, cond, uncond, args.cfg)
    with torch.no_grad():
        images = anima.decode(sample_euler(velocity, x, simple_sigmas(args.steps), disable=args.quiet))
    fig = new_figure(figsize=(2.2 * len(prompts), 2.6))
    for i, p in enumerate(prompts):
        ax = fig.add_subplot(1, len(prompts), i + 1)
        ax.imshow(images[i].permute(1, 2, 0).float().cpu().numpy())
        ax.set_title(p[:28], fontsize=6)
        ax.axis("off")
    settings = {k: v for k, v in vars(args).items() if k != "fn"} | {"model": anima.name}
    out = write_image_run(args.out or args.results, "demo", images, settings, fig, exact=args.out is not None)
    print(f"model {anima.name}: {len(prompts)} samples, {args.steps} Euler steps, CFG {args.cfg} -> {out}")
    return 0


def train_toy(args) -> int:
    from anima_probe.pipeline.experiment import apply_overrides
    from anima_probe.toyworld.train import PROFILES, train_toy_world

    cfg = apply_overrides(PROFILES[args.profile], args.overrides)
    checks.writable_folder(args.out_dir, "out_dir")
    t0 = time.time()
    model_dir = train_toy_world(Path(args.out_dir), cfg, device=check_device(args.device))
    print(f"toy world ({args.profile} profile, {cfg.steps} steps x batch {cfg.batch_size}) trained in "
          f"{time.time() - t0:.0f} s -> {model_dir}")
    return 0


def sample(args) -> int:
    """Mod-guided sampling: a grid of guidance weights (rows) x CFG scales (columns) into a numbered run folder."""
    from anima_probe.guidance import families
    from anima_probe.guidance import guided as gs
    from anima_probe.guidance.samplers import initial_noise
    from anima_probe.guidance.schedules import Schedule
    from anima_probe.model.clip import load_clip
    from anima_probe.pipeline.provenance import git_hash, sha256_file
    from anima_probe.pipeline.samples import grid_figure, write_sample_run

    ws = checks.number_list("--w", args.w, allow_off=True)
    cfgs = checks.number_list("--cfg", args.cfg, low=0.0)
    checks.finite("--final-w", str(args.final_w)), checks.finite("--shift", str(args.shift), low=0.0)
    checks.at_least("--steps", args.steps, 1), checks.at_least("--size", args.size, 8)
    checks.sigma_schedule(args.sigmas, args.steps, args.shift)
    checks.writable_folder(args.out, "--out")
    schedule = Schedule.parse(args.schedule)
    anima = _image_model(args, "sample draws images")
    source = families.load_source(args.proj, anima)
    family, prompts = families.family_of(source), [p.strip() for p in args.prompts.split("|")]
    guidance = gs.Guidance(0.0, schedule, args.final_w, None if args.rows == "auto" else args.rows)
    clip = load_clip(args.clip, device=anima.device) if args.clip and family.needs_clip else None
    gp = gs.prepare(anima, source, prompts, args.pos, args.neg, args.negative, clip=clip)
    noise = initial_noise(anima, len(prompts), args.size, args.seed)
    images = gs.sample_grid(anima, gp, ws, cfgs, guidance, noise, steps=args.steps, shift=args.shift,
                            sampler=args.sampler, schedule=args.sigmas, seed=args.seed, progress=not args.quiet)
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


def list_experiments(args) -> int:
    from anima_probe.pipeline.experiment import discover

    for exp in discover().values():
        kind = "text only" if not exp.needs_dit else "DiT"
        print(f"{exp.name:<22} v{exp.version:<3} {kind:<9} {exp.question}")
    return 0


def run(args) -> int:
    from anima_probe.pipeline.experiment import apply_overrides, discover, get, load_for
    from anima_probe.pipeline.experiment import run as run_experiment
    from anima_probe.pipeline.runs import read_run

    registry = discover()
    names = list(registry) if args.experiment == "all" else [get(args.experiment, registry).name]
    if args.experiment != "all":
        apply_overrides(registry[names[0]].config(), args.overrides)  # a bad override: before the model loads
    checks.writable_folder(args.results, "--results")
    anima = load_for([registry[n] for n in names], **model_kwargs(args))
    for name in names:
        overrides = args.overrides if args.experiment != "all" else []
        run_dir = run_experiment(name, overrides, anima=anima, results=args.results, progress=not args.quiet,
                                 registry=registry)
        record = read_run(run_dir)
        print(f"{name}: {run_dir}")
        for key, value in record.metrics.items():
            arrow = "^" if record.higher_is_better[key] else "v"
            print(f"  {key:<40} {value:>10.4f} {arrow}")
    return 0


def distill(args) -> int:
    """Distil a modulation source (family pooled_text_proj or cosmos) from the frozen model; rerun to resume."""
    from accelerate import Accelerator

    from anima_probe.model.anima import load_anima
    from anima_probe.model.clip import load_clip
    from anima_probe.pipeline.experiment import apply_overrides
    from anima_probe.training.distill import DistillConfig, distill
    from anima_probe.training.sweep import lr_sweep

    cfg = apply_overrides(DistillConfig(), args.overrides)
    sweep_lrs = checks.number_list("--sweep-lr", args.sweep_lr, low=0.0) if args.sweep_lr else None
    checks.at_least("--sweep-steps", args.sweep_steps, 1)
    device = check_device(args.device)
    checks.writable_folder(args.out, "--out")
    # one process, or one per GPU under `accelerate launch`; cpu=True only when the user asked for the CPU
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.device.type != device.type:
        raise UsageError(f"--device {args.device}: accelerate chose {accelerator.device}")
    anima = load_anima(**(model_kwargs(args) | {"device": accelerator.device}), with_vae=cfg.data == "images")
    clip = load_clip(args.clip, args.clip_tokenizer, device=accelerator.device) if args.clip else None
    kwargs = {"clip": clip, "accelerator": accelerator, "progress": not args.quiet, "long_captions": args.long_captions}
    if sweep_lrs:
        cfg = lr_sweep(cfg, Path(args.out), args.captions, anima, sweep_lrs, args.sweep_steps, **kwargs)
    path = distill(cfg, args.out, args.captions, anima, **kwargs)
    if accelerator.is_main_process:
        print(f"{cfg.family}: {path}  (loss curve, validation and checkpoint in {args.out})", file=sys.stdout)
    return 0

