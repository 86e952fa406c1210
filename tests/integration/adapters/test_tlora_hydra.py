"""T-LoRA's mask and HydraLoRA's router on the tiny twin, each checked against the plain LoRA it reduces to."""

from __future__ import annotations

import pytest
import torch

from anima_probe.adapters.apply import adapter_names, inject, lora_applied, remove_lora
from anima_probe.adapters.hydra import HydraUp, apply_hydra, hydra_weights, moe_path, read_hydra, save_hydra
from anima_probe.adapters.load import adapter_applied, adapter_kind
from anima_probe.adapters.lora import LoraWeights, save_lora
from anima_probe.adapters.names import default_targets, linear_shapes
from anima_probe.adapters.tlora import TLora, TLoraSchedule, schedule_metadata
from anima_probe.model.anima import load_anima
from anima_probe.model.tiny import write_tiny

R = 4


@pytest.fixture(scope="module")
def anima(tmp_path_factory):
    return load_anima(write_tiny(tmp_path_factory.mktemp("tiny"), with_vae=False), with_vae=False)


def _lora(anima, seed=0, keep: int | None = None) -> LoraWeights:
    """A random rank-R LoRA; keep=k zeroes down rows k.. (only the first k components act)."""
    g = torch.Generator().manual_seed(seed)
    w = LoraWeights({}, {}, {})
    for m in default_targets(anima.dit_config):
        out_f, in_f = linear_shapes(anima.dit_config)[m]
        w.down[m], w.up[m], w.alpha[m] = 0.3 * torch.randn(R, in_f, generator=g), 0.3 * torch.randn(out_f, R, generator=g), 2.0
        if keep is not None:
            w.down[m][keep:] = 0
    return w


def _velocity(anima, sigma):
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(len(sigma), 16, 8, 8, generator=g), torch.randn(len(sigma), 512, 32, generator=g)
    with torch.no_grad():
        return anima.velocity(x, torch.tensor(sigma), ctx)


def _tlora_velocity(anima, w, sigma, min_rank=1):
    with lora_applied(anima, w) as layers, TLora(anima.transformer, layers, "lora", TLoraSchedule(R, min_rank)):
        return _velocity(anima, sigma)


def test_tlora_at_pure_noise_uses_only_r_min_components_and_all_when_clean(anima):
    w = _lora(anima)
    sig = [1.0, 0.0]
    tl = _tlora_velocity(anima, w, sig)
    with lora_applied(anima, _lora(anima, keep=1)):
        first_only = _velocity(anima, sig)
    with lora_applied(anima, w):
        full = _velocity(anima, sig)
    assert torch.allclose(tl[0], first_only[0], atol=1e-6)  # sigma = 1: R_min = 1 component
    assert torch.allclose(tl[1], full[1], atol=1e-6)  # sigma = 0: all R, each row its own mask
    assert (first_only[0] - full[0]).abs().max() > 1e-3  # the mask did something
    mid = _tlora_velocity(anima, w, [0.5, 0.5], min_rank=1)  # r = floor(0.5 * 3 + 1) = 2
    with lora_applied(anima, _lora(anima, keep=2)):
        assert torch.allclose(mid, _velocity(anima, [0.5, 0.5]), atol=1e-6)


def test_tlora_hooks_come_off_and_refuse_mixed_ranks(anima):
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules())
    _tlora_velocity(anima, _lora(anima), [0.3])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in anima.transformer.modules()) == before
    with lora_applied(anima, _lora(anima)) as layers, pytest.raises(ValueError, match="needs rank 8"):
        TLora(anima.transformer, layers, "lora", TLoraSchedule(8))


def _hydra_layers(anima, heads, seed=0):
    w = _lora(anima, seed)
    targets = list(w.down)
    layers = inject(anima, {m: R for m in targets}, w.alpha, "hydra")
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for m, layer in layers.items():
            layer.lora_A["hydra"].weight.copy_(w.down[m])
            up = HydraUp(R, layer.get_base_layer().out_features, heads, g)
            up.heads.copy_(torch.randn(up.heads.shape, generator=g) * 0.3)
            layer.lora_B["hydra"] = up
    return layers, w


def test_hydra_with_one_head_is_the_plain_lora_with_that_head(anima):
    layers, w = _hydra_layers(anima, heads=1)
    plain = LoraWeights(dict(w.down), {m: layers[m].lora_B["hydra"].heads[0].detach().clone() for m in w.down},
                        dict(w.alpha))
    hydra_v = _velocity(anima, [0.4, 0.9])
    remove_lora(anima, "hydra")
    with lora_applied(anima, plain):
        assert torch.allclose(hydra_v, _velocity(anima, [0.4, 0.9]), atol=1e-5)


def test_router_weights_sum_to_one_and_a_one_hot_router_picks_its_head(anima):
    layers, w = _hydra_layers(anima, heads=3)
    up = next(iter(layers.values())).lora_B["hydra"]
    g = up.gates(torch.randn(5, 7, R))  # (B, E)
    assert g.shape == (5, 3) and torch.allclose(g.sum(-1), torch.ones(5)) and bool((g > 0).all())
    heads = {m: layer.lora_B["hydra"].heads.detach().clone() for m, layer in layers.items()}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["hydra"].router.weight.zero_()
            layer.lora_B["hydra"].router.bias.copy_(torch.tensor([-1e4, 1e4, -1e4]))  # always head 1
    routed = _velocity(anima, [0.2, 0.6])
    remove_lora(anima, "hydra")
    with lora_applied(anima, LoraWeights(dict(w.down), {m: h[1] for m, h in heads.items()}, dict(w.alpha))):
        assert torch.allclose(routed, _velocity(anima, [0.2, 0.6]), atol=1e-5)


def test_hydra_files_round_trip_and_load_live_or_baked(anima, tmp_path):
    snap = {k: v.clone() for k, v in anima.transformer.state_dict().items()}
    layers, _ = _hydra_layers(anima, heads=3)
    for layer in layers.values():  # a "training" forward records the gates the bake uses
        layer.lora_B["hydra"].train()
    _velocity(anima, [0.5, 0.5])
    live = _velocity(anima, [0.3, 0.7])
    saved = hydra_weights(layers, "hydra")
    m = next(iter(saved.heads))
    gate = layers[m].lora_B["hydra"].mean_gate()
    assert torch.allclose(gate.sum(), torch.tensor(1.0)) and not torch.allclose(gate, torch.full((3,), 1 / 3))
    remove_lora(anima, "hydra")
    plain, moe = save_hydra(saved, tmp_path / "h.safetensors", anima.dit_config)
    assert moe == moe_path(plain) and moe.name == "h_moe.safetensors"
    assert adapter_kind(plain, anima.dit_config) == "hydra"
    back = read_hydra(plain, anima.dit_config)
    assert all(torch.equal(back.heads[m], saved.heads[m]) for m in saved.heads)
    assert torch.allclose(back.lora.up[m], torch.einsum("e,eor->or", gate, saved.heads[m]), atol=1e-6)
    apply_hydra(anima, back, "h2")
    assert torch.allclose(_velocity(anima, [0.3, 0.7]), live, atol=1e-6)  # eval mode: no gate bookkeeping
    remove_lora(anima, "h2")
    with adapter_applied(anima, plain, live=False) as kind:  # what ComfyUI sees: the baked plain LoRA
        assert kind == "hydra" and not (_velocity(anima, [0.3, 0.7]) - live).abs().max() < 1e-6
    now = anima.transformer.state_dict()
    assert adapter_names(anima.transformer) == [] and all(torch.equal(now[k], snap[k]) for k in snap)


def test_tlora_file_is_detected_and_masked_when_loaded(anima, tmp_path):
    w = _lora(anima)
    w.metadata |= schedule_metadata(TLoraSchedule(R))
    path = save_lora(w, tmp_path / "t.safetensors", "kohya", anima.dit_config)
    assert adapter_kind(path, anima.dit_config) == "tlora"
    with adapter_applied(anima, path):
        masked = _velocity(anima, [1.0])
    with adapter_applied(anima, path, live=False):
        unmasked = _velocity(anima, [1.0])
    assert torch.allclose(masked, _tlora_velocity(anima, w, [1.0]), atol=1e-6)
    assert (masked - unmasked).abs().max() > 1e-3
