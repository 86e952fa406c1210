"""The `anima-probe` command line: one entry point for the suite's jobs.

Conventions: every verb that loads a model shares one parent parser for the model options (`--model`, the per-file
flags, `--device`, `--dtype`); a usage or input error (the project's own `AnimaProbeError`) is one line on stderr and
exit 2; Ctrl-C is one line and exit 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: every file is local

from anima_probe.cli import checks, commands  # noqa: E402
from anima_probe.errors import AnimaProbeError  # noqa: E402
from anima_probe.model.options import DTYPES, model_parent, torch_dtype  # noqa: E402
from anima_probe.pipeline import gate, report  # noqa: E402  (light modules: argument definitions of report / regress)

__all__ = ["DTYPES", "main", "torch_dtype"]

SAMPLER_NAMES = ("euler", "euler_ancestral", "er_sde", "dpmpp_2m_sde")
SCHEDULE_NAMES = ("simple", "sgm_uniform", "karras", "exponential", "beta", "bong_tangent")
DEMO_PROMPTS = ("score_9, masterpiece, 1girl, solo, @kiri_ama|score_9, masterpiece, scenery, landscape, no humans, "
                "@neon_yoru|score_1, worst quality, mecha, robot, no humans, @pop_kyu|score_9, still life, fruit, "
                "no humans, @sumi_kuro")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_sample(sub, parents) -> None:
    p = sub.add_parser("sample", parents=parents, help="modulation-guided sampling: a w x CFG grid into a run folder")
    p.add_argument("--proj", required=True, help="modulation source: pooled_text_proj .safetensors or cosmos .pt")
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
    # Names of guidance.samplers.SAMPLERS / guidance.sigmas.SCHEDULES, spelled out so that building the parser does
    # not import torch; tests/unit/cli checks that they are the registries' keys.
    p.add_argument("--sampler", default="euler", choices=SAMPLER_NAMES)
    p.add_argument("--sigmas", default="simple", choices=SCHEDULE_NAMES, help="sigma schedule of the sampler steps")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (>= 1)")
    p.add_argument("--shift", type=float, default=3.0, help="flow schedule shift (>= 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (>= 8)")
    p.add_argument("--out", default="results", help="where run folders go")
    p.set_defaults(fn=commands.sample)


def _add_model_verbs(sub, parents) -> None:
    p = sub.add_parser("demo", parents=parents, help="sample a prompt grid from a model folder (default: the toy world)",
                       description="Sample one image per prompt with CFG (Euler) and write grid.png and settings.json "
                       "into a new run folder under --results (or exactly into --out). Never writes into reports/.")
    p.add_argument("--prompts", default=DEMO_PROMPTS, help="prompts separated by | (default: four toy-world prompts)")
    p.add_argument("--steps", type=int, default=20, help="Euler steps (>= 1)")
    p.add_argument("--cfg", type=float, default=4.0, help="CFG scale (ComfyUI convention, >= 0)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (>= 8)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--results", default="results", help="where the numbered run folder NNN-demo goes")
    p.add_argument("--out", default=None, help="a folder to write grid.png and settings.json into instead")
    p.set_defaults(fn=commands.demo)
    _add_sample(sub, parents)
    p = sub.add_parser("run", parents=parents, help="run an experiment (or all) into a new numbered folder")
    p.add_argument("experiment", help="an experiment name from `anima-probe list`, or all")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (one experiment only)")
    p.add_argument("--results", default="results", help="where run folders go")
    p.set_defaults(fn=commands.run)
    p = sub.add_parser("distill", parents=parents, help="train a modulation source by distillation (resumable; "
                       "several processes: accelerate launch --multi_gpu, or torchrun --nproc_per_node N on CPUs)")
    p.add_argument("captions", help="caption set (.csv/.jsonl; an image column for data=images)")
    p.add_argument("overrides", nargs="*", help="DistillConfig overrides key=value, e.g. family=cosmos steps=4000")
    p.add_argument("--out", required=True, help="run folder: rerunning with the same folder resumes")
    p.add_argument("--clip", default=None, help="CLIP-L text model file or folder (family cosmos)")
    p.add_argument("--clip-tokenizer", default=None, help="CLIP tokenizer folder (default: found next to --clip)")
    p.add_argument("--long-captions", default="refuse", choices=["refuse", "truncate"],
                   help="a caption over the encoder's 512 tokens: refuse the set naming the row (default), or "
                   "truncate it to its first 512 tokens as the published trainers do")
    p.add_argument("--sweep-lr", default=None, help="comma-separated learning rates: short runs at each first "
                   "(--sweep-steps), the lowest validation loss sets lr; recorded in OUT/sweep.csv")
    p.add_argument("--sweep-steps", type=int, default=150, help="steps of each sweep run (default 150)")
    p.set_defaults(fn=commands.distill)
    p = sub.add_parser("report", parents=parents, help="rerun stale experiments, execute notebooks -> reports")
    report.add_arguments(p)
    p.set_defaults(fn=report.cli)
    p = sub.add_parser("regress", parents=parents, help="the regression gate: latest runs vs reports/baselines/<tier>/")
    gate.add_arguments(p)
    p.set_defaults(fn=gate.cli)


def build_parser() -> Parser:
    parser = Parser(prog="anima-probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    quiet = Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("tiny", help="write a tiny Anima model folder in the real file formats")
    p.add_argument("out_dir")
    p.add_argument("--layout", default="single-file", choices=["single-file", "diffusers", "comfyui"],
                   help="single files (model folder), the diffusers folder, or a ComfyUI install (models/)")
    p.add_argument("--prefix", default="net.", choices=["net.", "model.diffusion_model.", "none"],
                   help="the DiT file's key prefix (single-file and comfyui layouts)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=commands.tiny)
    p = sub.add_parser("train-toy", help="train the tiny toy-world Anima from scratch (resumable)")
    p.add_argument("out_dir", help="run/ (checkpoints, loss.csv) and model/ (the model folder) go here")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "positive-control-cpu", "positive-control-gpu"],
                   help="training budget; positive-control-*: with the pooled modulation path (toyworld/train.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", help="ToyConfig overrides key=value, e.g. steps=200")
    p.set_defaults(fn=commands.train_toy)
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(fn=commands.list_experiments)
    _add_model_verbs(sub, [model_parent(), quiet])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`run exp --quiet k=v`), which argparse leaves unparsed
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "experiment", None) == "all" and args.overrides:
        parser.error("overrides apply to one experiment; run them one at a time")
    try:
        if "dtype" in args:  # a verb that loads a model: caches and file-hash memos are read and written
            checks.usable_cache()
        return args.fn(args)
    except AnimaProbeError as err:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        print(f"anima-probe {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # TrainingInterrupted says where the last checkpoint is
        print(f"anima-probe {args.command}: {str(err) or 'interrupted'}; nothing half-written was kept", file=sys.stderr)
        return 130
