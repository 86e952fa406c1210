"""Hook points: names resolve, captures separate call and step, patches edit, nothing survives an error."""

from __future__ import annotations

import pytest
import torch

from anima_probe.model.anima import load_anima
from anima_probe.model.tiny import write_tiny
from anima_probe.probes.hooks import add_vector, capture, patch, resolve, sampler_step


@pytest.fixture(scope="module")
def anima(tmp_path_factory):
    return load_anima(write_tiny(tmp_path_factory.mktemp("tiny"), with_vae=False), with_vae=False)


def _inputs():
    return torch.randn(2, 16, 8, 8), torch.tensor([0.3, 0.6]), torch.randn(2, 512, 32)


def _hook_count(anima):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())


def test_unknown_name_suggests_close_ones(anima):
    with pytest.raises(KeyError, match="did you mean t_embedding_norm"):
        resolve(anima, "t_embeding_norm")
    with pytest.raises(KeyError, match="2 blocks"):
        resolve(anima, "blocks.9")


def test_capture_records_call_and_step(anima):
    x, s, ctx = _inputs()
    with capture(anima, ["t_embedding_norm", "t_embedding_norm.input", "adaln_lora"]) as caps, torch.no_grad():
        for step in range(2):
            with sampler_step(step):
                anima.velocity(x, s, ctx)  # CFG: two calls per step
                anima.velocity(x, s, ctx)
    recs = caps["t_embedding_norm"].records
    assert [r.call for r in recs] == [0, 1, 2, 3] and [r.step for r in recs] == [0, 0, 1, 1]
    assert caps["adaln_lora"].value.shape == (2, 3 * 64)
    before, after = caps["t_embedding_norm.input"].value, caps["t_embedding_norm"].value
    assert not torch.allclose(before, after)  # the norm sits between the two


def test_zero_patch_is_identity_and_nonzero_changes_velocity(anima):
    x, s, ctx = _inputs()
    with torch.no_grad():
        base = anima.velocity(x, s, ctx)
        with patch(anima, {"t_embedding_norm": add_vector(torch.zeros(64))}):
            assert torch.equal(anima.velocity(x, s, ctx), base)
        with patch(anima, {"t_embedding_norm": add_vector(torch.ones(64), alpha=2.0)}):
            assert not torch.allclose(anima.velocity(x, s, ctx), base)


def test_hooks_removed_after_an_error(anima):
    x, s, ctx = _inputs()
    before = _hook_count(anima)
    def broken(v):
        raise ZeroDivisionError("an edit that fails mid-forward")

    with pytest.raises(ZeroDivisionError):
        with patch(anima, {"blocks.0": broken}):
            anima.velocity(x, s, ctx)
    assert _hook_count(anima) == before


def test_stop_ends_the_forward_before_the_blocks(anima):
    x, s, ctx = _inputs()
    with capture(anima, ["adaln_lora", "blocks.1"]) as full, torch.no_grad():
        anima.velocity(x, s, ctx)
    with capture(anima, "adaln_lora", stop=True) as early, capture(anima, "blocks.1") as late, torch.no_grad():
        anima.velocity(x, s, ctx)
    assert torch.equal(early["adaln_lora"].value, full["adaln_lora"].value)
    assert not late["blocks.1"].records  # the blocks never ran
