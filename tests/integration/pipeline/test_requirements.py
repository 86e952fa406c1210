"""Experiments declare what they need and one loader (`load_for`) honours it: the VAE is loaded exactly when an
experiment makes images, and a latent model without a VAE is refused naming the experiments, before any runs."""

from __future__ import annotations

import shutil

import pytest

from anima_probe.errors import InputError
from anima_probe.pipeline.experiment import discover, load_for

REGISTRY = discover()


def test_every_experiment_declares_its_needs():
    needs = {name: exp.needs for name, exp in REGISTRY.items()}
    assert {n for n, e in REGISTRY.items() if e.needs_images} == {"compatibility", "guidance-dose", "scheduler-drift",
                                                                      "toyworld-evidence"}
    assert all(n[0] == "text_encoder" for n in needs.values())
    assert needs["pooling-nmi"] == ("text_encoder",)
    assert needs["guidance-dose"] == ("text_encoder", "dit", "vae")


def test_the_vae_is_loaded_exactly_when_an_experiment_makes_images(tiny_model_dir):
    assert load_for([REGISTRY["pooling-nmi"], REGISTRY["injection-mse"]], tiny_model_dir).vae is None
    anima = load_for([REGISTRY["pooling-nmi"], REGISTRY["guidance-dose"]], tiny_model_dir)
    assert anima.vae is not None and "vae" in anima.files


def test_a_latent_model_without_a_vae_is_refused_naming_the_experiments(tiny_model_dir, tmp_path):
    twin = shutil.copytree(tiny_model_dir, tmp_path / "twin")
    shutil.rmtree(twin / "vae")
    assert load_for([REGISTRY["pooling-nmi"]], twin).vae is None  # a text experiment needs no VAE
    with pytest.raises(InputError, match=r"compatibility, guidance-dose, scheduler-drift, toyworld-evidence make\(s\) RGB images, but the DiT in "
                       r".*samples 16-channel latents and no VAE was found"):
        load_for(list(REGISTRY.values()), twin)


def test_the_pixel_space_toy_world_needs_no_vae():
    anima = load_for(list(REGISTRY.values()))
    assert anima.vae is None and anima.dit_config.in_channels == 3
