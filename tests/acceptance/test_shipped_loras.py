"""The shipped 13th-artist adapters (data/toyworld/lora/) on the shipped toy model: they teach the new artist.

The margins were fixed before the shipped adapters were trained or evaluated (data/toyworld/lora/README.md):
each adapter must raise the novel artist's classifier accuracy by at least 0.4 over the base model with the 95 %
bootstrap interval of the gain above 0, and with the plain LoRA on, the twelve shipped artists must still be
recognised in at least 75 % of their samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anima_probe.adapters.evaluate import NovelArtistEvalConfig, evaluate
from anima_probe.adapters.load import adapter_applied, adapter_kind
from anima_probe.model.anima import load_anima

LORA_DIR = Path(__file__).resolve().parents[2] / "data" / "toyworld" / "lora"
FILES = {"lora": LORA_DIR / "tsuki_hoshi-lora.safetensors", "tlora": LORA_DIR / "tsuki_hoshi-tlora.safetensors",
         "hydra": LORA_DIR / "tsuki_hoshi-hydra.safetensors"}
MIN_GAIN = 0.4
MIN_OTHERS = 0.75

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def anima():
    return load_anima()


def test_files_are_the_kinds_they_claim_and_leave_the_model_bit_for_bit(anima):
    before = {k: v.clone() for k, v in anima.transformer.state_dict().items()}
    for kind, path in FILES.items():
        assert adapter_kind(path, anima.dit_config) == kind
        with adapter_applied(anima, path) as applied:
            assert applied == kind
    after = anima.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_each_adapter_teaches_the_novel_artist_and_the_plain_lora_keeps_the_others(anima):
    m = evaluate(anima, {k: str(p) for k, p in FILES.items()}, NovelArtistEvalConfig())
    assert m["classifier/holdout_accuracy"] >= 0.9  # positive control: the 13-artist classifier works
    assert m["novel/base"] <= 0.2  # negative control: the base model cannot draw a tag it never saw
    for kind in FILES:
        assert m[f"gain/{kind}"] >= MIN_GAIN and m[f"gain/{kind}_lo"] > 0, (kind, m)
    assert m["others/lora"] >= MIN_OTHERS, m
