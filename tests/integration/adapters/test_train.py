"""LoRA training on the tiny twin: a resumed run equals the uninterrupted one, for every adapter kind."""

from __future__ import annotations

import csv
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

from anima_probe.adapters.train import LoraTrainConfig, export_checkpoint, main, train_lora

FAST = LoraTrainConfig(n_images=8, n_prior=8, steps=4, batch_size=4, warmup=1, checkpoint_every=2, rank=2,
                       alpha=2.0, heads=2)


def _losses(run):
    with open(run / "loss.csv") as f:
        return [r["loss"] for r in csv.DictReader(f)]


@pytest.mark.parametrize("kind", ["lora", "tlora", "hydra"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_model_dir, tmp_path, kind):
    cfg = replace(FAST, kind=kind)
    whole = train_lora(tmp_path / "whole", cfg, tiny_model_dir, progress=False)
    early = load_file(train_lora(tmp_path / "cut", replace(cfg, steps=2), tiny_model_dir, progress=False))
    again = load_file(export_checkpoint(tmp_path / "cut", tiny_model_dir))  # a stopped run's checkpoint, exported
    assert early.keys() == again.keys() and all(torch.equal(early[k], again[k]) for k in early)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)  # the run above, stopped at 2 ...
    state["config"] = asdict(cfg)  # ... and resumed under the full schedule (steps 0-1 share its LR: warmup 1)
    torch.save(state, tmp_path / "cut" / "checkpoint.pt")
    resumed = train_lora(tmp_path / "cut", cfg, tiny_model_dir, progress=False)
    assert len(_losses(tmp_path / "whole")) == 4 and _losses(tmp_path / "cut") == _losses(tmp_path / "whole")
    a, b = load_file(resumed), load_file(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_up.weight") and a[k].abs().max() > 0 for k in a)  # it left the zero init
    with pytest.raises(ValueError, match="written for another config"):
        train_lora(tmp_path / "cut", replace(cfg, lr=1e-2), tiny_model_dir, progress=False)


def test_command_line_refuses_unknown_keys_and_kinds(capsys):
    with pytest.raises(SystemExit):
        main(["out", "rnak=4"])
    assert "did you mean rank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["out", "kind=dora"])
    assert "kind must be one of" in capsys.readouterr().err
