"""A LoRA on the tiny twin: the update it makes is the formats' update, and removal gives back the base bit for bit."""

from __future__ import annotations

import pytest
import torch

from anima_probe.adapters.apply import adapter_names, apply_lora, lora_applied, remove_lora
from anima_probe.adapters.lora import LoraWeights, read_lora, save_lora
from anima_probe.adapters.names import default_targets, linear_modules, linear_shapes
from anima_probe.model.anima import load_anima
from anima_probe.model.tiny import write_tiny


@pytest.fixture(scope="module")
def anima(tmp_path_factory):
    return load_anima(write_tiny(tmp_path_factory.mktemp("tiny"), with_vae=False), with_vae=False)


def _lora(anima, rank=4, alpha=2.0, seed=0, modules=None) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    w = LoraWeights({}, {}, {})
    for m in modules or default_targets(anima.dit_config):
        out_f, in_f = linear_shapes(anima.dit_config)[m]
        w.down[m] = 0.3 * torch.randn(rank, in_f, generator=g)
        w.up[m] = 0.3 * torch.randn(out_f, rank, generator=g)
        w.alpha[m] = alpha
    return w


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.8]), torch.randn(2, 512, 32, generator=g)


def _velocity(anima):
    with torch.no_grad():
        return anima.velocity(*_inputs())


def _snapshot(anima):
    return {k: v.clone() for k, v in anima.transformer.state_dict().items()}, str(anima.transformer)


def _assert_restored(anima, snap):
    state, tree = snap
    now = anima.transformer.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert str(anima.transformer) == tree and adapter_names(anima.transformer) == []


def test_the_lora_adds_scale_up_down_to_each_weight(anima):
    """Known answer: the LoRA forward equals the base model with W + (alpha/r) up @ down written in."""
    w = _lora(anima)
    snap = _snapshot(anima)
    with lora_applied(anima, w):
        lora_v = _velocity(anima)
    names = linear_modules(anima.dit_config)
    with torch.no_grad():
        for m in w.down:
            anima.transformer.get_submodule(names[m]).weight += w.delta(m)
        merged_by_hand = _velocity(anima)
        anima.transformer.load_state_dict(snap[0])
    assert torch.allclose(lora_v, merged_by_hand, atol=1e-5)
    assert (lora_v - _velocity(anima)).abs().max() > 1e-2  # the LoRA does change the output


@pytest.mark.parametrize("merge", [False, True])
def test_remove_restores_every_base_tensor_bit_for_bit(anima, merge):
    snap, base_v = _snapshot(anima), _velocity(anima)
    if merge:
        apply_lora(anima, _lora(anima), "a", merge=True)
        with pytest.raises(ValueError, match="merged into the weights; remove it first"):
            apply_lora(anima, _lora(anima, seed=1), "b")
        assert adapter_names(anima.transformer) == ["a"]
    else:
        apply_lora(anima, _lora(anima), "a")
        apply_lora(anima, _lora(anima, seed=1), "b", strength=0.5)
        assert adapter_names(anima.transformer) == ["a", "b"]
        with pytest.raises(ValueError, match="merge=True needs a bare model"):
            apply_lora(anima, _lora(anima, seed=2), "c", merge=True)
        remove_lora(anima, "b")
    remove_lora(anima, "a")
    _assert_restored(anima, snap)
    assert torch.equal(_velocity(anima), base_v)


def test_merged_and_unmerged_lora_give_the_same_forward(anima):
    w = _lora(anima)
    with lora_applied(anima, w):
        live = _velocity(anima)
    with lora_applied(anima, w, merge=True):
        merged = _velocity(anima)
    assert torch.allclose(live, merged, atol=1e-5)


def test_strength_and_two_loras_add_up(anima):
    base = _velocity(anima)
    w1, w2 = _lora(anima, seed=1, alpha=0.5), _lora(anima, seed=2, alpha=0.5)
    with lora_applied(anima, w1, "one", strength=0.0):
        assert torch.allclose(_velocity(anima), base, atol=1e-6)  # strength 0 is the base model
    with lora_applied(anima, w1, "one"), lora_applied(anima, w2, "two"):
        both = _velocity(anima)
        remove_lora(anima, "two")
        only_one = _velocity(anima)
        apply_lora(anima, w2, "two")  # (the context manager removes it again)
    with lora_applied(anima, w1, "one"):
        assert torch.allclose(_velocity(anima), only_one, atol=1e-6)  # the other LoRA left no trace
    assert (both - only_one).abs().max() > 1e-3


def test_kohya_and_peft_files_give_the_same_forward(anima, tmp_path):
    w = _lora(anima, alpha=3.0)
    outs = []
    for fmt in ("kohya", "comfyui", "peft"):
        with lora_applied(anima, read_lora(save_lora(w, tmp_path / f"{fmt}.safetensors", fmt, anima.dit_config),
                                           anima.dit_config)):
            outs.append(_velocity(anima))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_errors_leave_the_model_clean(anima):
    snap = _snapshot(anima)
    with pytest.raises(RuntimeError, match="boom"), lora_applied(anima, _lora(anima)):
        raise RuntimeError("boom")
    _assert_restored(anima, snap)
    with pytest.raises(ValueError, match="no adapter named 'ghost'"):
        remove_lora(anima, "ghost")
    with lora_applied(anima, _lora(anima), "x"), pytest.raises(ValueError, match="already applied"):
        apply_lora(anima, _lora(anima), "x")
    _assert_restored(anima, snap)
