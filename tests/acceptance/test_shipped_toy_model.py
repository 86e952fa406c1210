"""The shipped toy world loads through the real `--model DIR` path and samples; a shortened rebuild runs."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

from anima_probe.guidance.samplers import sample_euler, simple_sigmas
from anima_probe.model.anima import default_model_dir, load_anima
from anima_probe.model.text import encode_prompts
from anima_probe.pipeline.manifests import MANIFEST_DIR, read_caption_set
from anima_probe.pipeline.vocabulary import (
    VOCAB_FILE,
    UntrainedTokens,
    check_prompt_set,
    checked_prompt_sets,
    find_training_vocabulary,
)
from anima_probe.toyworld.captions import TOYWORLD_CAPTIONS
from anima_probe.toyworld.train import (
    DIT_FILE,
    ToyConfig,
    checkpoint_model_folder,
    train_toy_world,
    write_vocabulary,
)


def test_shipped_model_loads_and_samples_in_range():
    anima = load_anima(default_model_dir(), with_vae=False)
    assert anima.dit_config.in_channels == 3 and anima.vae is None
    ctx = encode_prompts(anima, ["score_9, masterpiece, 1girl, solo, @kiri_ama"]).crossattn_emb
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = anima.decode(sample_euler(lambda x, s: anima.velocity(x, s, ctx), x, simple_sigmas(8), disable=True))
    assert image.shape == (1, 3, 32, 32) and 0 <= image.min() and image.max() <= 1 and image.std() > 0.05


def test_shortened_rebuild_is_deterministic_and_resumes_exactly(tmp_path):
    cfg = replace(ToyConfig(), n_images=48, steps=4, batch_size=4, checkpoint_every=2, warmup=1, hidden=32,
                  num_blocks=1, text_dim=32, qwen_hidden=32, qwen_vocab=300, t5_vocab=200)
    train_toy_world(tmp_path / "a", cfg, progress=False)
    train_toy_world(tmp_path / "b", replace(cfg, steps=2), progress=False)  # interrupted after 2 steps ...
    state = torch.load(tmp_path / "b/run/checkpoint.pt", weights_only=True)
    state["config"] = asdict(cfg)  # ... and resumed under the full schedule (steps 0-1 share its LR)
    torch.save(state, tmp_path / "b/run/checkpoint.pt")
    train_toy_world(tmp_path / "b", cfg, progress=False)
    losses = [[r["loss"] for r in csv.DictReader(open(tmp_path / d / "run/loss.csv"))] for d in ("a", "b")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # the resumed steps 2-3 match digit for digit
    # The checkpoint rebuilds the written model folder (EMA), and its raw weights differ from it.
    shipped = load_file(tmp_path / "a/model" / DIT_FILE)
    ema = load_file(checkpoint_model_folder(tmp_path / "a", tmp_path / "ema") / DIT_FILE)
    raw = load_file(checkpoint_model_folder(tmp_path / "a", tmp_path / "raw", ema=False) / DIT_FILE)
    assert shipped.keys() == ema.keys() == raw.keys() and all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(shipped[k], raw[k]) for k in shipped)
    assert load_anima(tmp_path / "raw", with_vae=False).dit_config.hidden == cfg.hidden  # loads as a model folder
    # The trainer records the T5 ids of its 48 captions and the empty prompt, where a check finds them
    vocab = find_training_vocabulary(load_anima(tmp_path / "a/model", with_vae=False))
    assert vocab.captions == 49 and "captions(n=48, seed=0)" in vocab.source


def test_shipped_training_vocabulary_regenerates_and_fits_the_toy_prompt_sets(tmp_path):
    shipped = default_model_dir()
    folder = shutil.copytree(shipped, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / VOCAB_FILE).unlink()
    write_vocabulary(folder, ToyConfig(**json.loads((shipped / "toyworld.json").read_text())))
    assert (folder / VOCAB_FILE).read_bytes() == (shipped / VOCAB_FILE).read_bytes()
    anima = load_anima(shipped, with_vae=False)
    sets, check = checked_prompt_sets(anima, None)  # the toy tier's own sets: every token trained
    assert sets["files"]["content_types.csv"] == "data/manifests/toyworld/content_types.csv" and check.share == 0.0
    captions = read_caption_set(TOYWORLD_CAPTIONS)  # pooling-nmi's caption set too
    assert check_prompt_set(anima, [(r.id, r.caption) for r in captions]).share == 0.0
    with pytest.raises(UntrainedTokens, match=r"^data/manifests/content_types\.csv:2: token '▁standing'"):
        checked_prompt_sets(anima, str(MANIFEST_DIR))  # the Anima-style sets are refused on this tier


def test_training_profiles_build_the_shipped_architecture():
    """Every budget trains the same model the suite ships, so a CPU-trained world is a drop-in replacement."""
    from anima_probe.toyworld.train import PROFILES

    shipped = json.loads((default_model_dir() / "toyworld.json").read_text())
    arch = ("hidden", "num_blocks", "head_dim", "text_dim", "adapter_layers", "qwen_hidden", "qwen_vocab", "t5_vocab",
            "image_size", "n_images", "seed")
    for name, cfg in PROFILES.items():
        assert {k: asdict(cfg)[k] for k in arch} == {k: shipped[k] for k in arch}, name
    assert PROFILES["gpu"] == ToyConfig(**shipped)  # the shipped model is exactly the gpu profile (later keys default)


def test_train_toy_cli_offers_every_profile(tmp_path, capsys):
    import re

    import pytest

    from anima_probe.cli import main
    from anima_probe.toyworld.train import PROFILES

    with pytest.raises(SystemExit):
        main(["train-toy", str(tmp_path / "out"), "--profile", "nope"])
    offered = re.search(r"choose from (.*)\)", capsys.readouterr().err).group(1)
    assert sorted(re.findall(r"'([\w-]+)'", offered)) == sorted(PROFILES)
    assert not (tmp_path / "out").exists()


def test_train_toy_cli_refuses_unknown_overrides(tmp_path, capsys):
    from anima_probe.cli import main

    assert main(["train-toy", str(tmp_path / "out"), "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "anima-probe train-toy: error: unknown config key 'stepz'" in err and "did you mean steps" in err
    assert not (tmp_path / "out").exists()  # nothing started
