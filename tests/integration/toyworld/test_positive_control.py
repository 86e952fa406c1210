"""The positive control's modulation path: a no-op before training, present at every block and the final layer,
trained end to end, and resumable digit for digit like the plain toy world."""

from __future__ import annotations

import csv
from dataclasses import asdict, replace

import pytest
import torch
from safetensors import safe_open

from anima_probe.guidance.sources import load_pooled_text_proj
from anima_probe.model.anima import Anima, dit_velocity, load_anima
from anima_probe.toyworld import positive_control as pc
from anima_probe.toyworld.train import PROFILES, ToyConfig, _models, train_toy_world

TINY = {"n_images": 48, "steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup": 1, "hidden": 32,
        "num_blocks": 2, "text_dim": 32, "qwen_hidden": 32, "qwen_vocab": 300, "t5_vocab": 200}


def _net():
    cfg = replace(PROFILES["positive-control-cpu"], **TINY)
    nets = _models(cfg, 200, torch.device("cpu"))
    for p in nets["transformer"].parameters():  # away from adaLN-Zero, so every block's modulation matters
        torch.nn.init.normal_(p, std=0.05)
    return Anima(nets["transformer"], nets["adapter"], cfg.dit()), nets["projection"]


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, 16, 16, generator=g), torch.full((batch,), 0.6),
            torch.randn(batch, 512, 32, generator=g), torch.randn(batch, 32, generator=g))


def test_the_path_is_a_no_op_before_training():
    net, projection = _net()
    x, sigma, ctx, pooled = _inputs()
    assert torch.count_nonzero(projection(pooled)) == 0  # zero-initialised output layer
    with torch.no_grad():
        plain = dit_velocity(net.transformer, x, sigma, ctx)
        with pc.pooled_injection(net, projection, pooled):
            assert torch.equal(dit_velocity(net.transformer, x, sigma, ctx), plain)


def test_the_path_reaches_every_block_and_the_final_layer():
    net, projection = _net()
    torch.nn.init.normal_(projection.linear_out.weight, std=0.1)  # a trained-looking projection
    x, sigma, ctx, pooled = _inputs()
    modules = [(f"block{i}", b, 2) for i, b in enumerate(net.transformer.transformer_blocks)]
    modules.append(("final", net.transformer.norm_out, 1))  # norm_out(hidden, embedded_timestep, temb)

    def inputs(path) -> dict[str, torch.Tensor]:
        """What each block / the final layer reads as embedded_timestep; recorders go on after the path's hooks."""
        seen = {}
        with torch.no_grad(), pc.pooled_injection(net, path, pooled):
            handles = [m.register_forward_pre_hook(lambda mod, args, kw, n=n, i=i: seen.update({n: args[i]}),
                                                   with_kwargs=True) for n, m, i in modules]
            try:
                seen["velocity"] = dit_velocity(net.transformer, x, sigma, ctx)
            finally:
                for h in handles:
                    h.remove()
        return seen

    plain, steered = inputs(None), inputs(projection)
    vector = projection(pooled).detach()  # (B, D)
    for name, _, _ in modules:
        torch.testing.assert_close(steered[name] - plain[name], vector, msg=name)  # P(pooled), per row, everywhere
    assert not torch.allclose(steered["velocity"], plain["velocity"])


def test_training_moves_the_projection_and_resumes_exactly(tmp_path):
    cfg = replace(PROFILES["positive-control-cpu"], **TINY)
    model = train_toy_world(tmp_path / "a", cfg, progress=False)
    train_toy_world(tmp_path / "b", replace(cfg, steps=2), progress=False)  # interrupted after 2 steps ...
    state = torch.load(tmp_path / "b/run/checkpoint.pt", weights_only=True)
    assert {"projection", "ema_projection"} <= set(state)
    state["config"] = asdict(cfg)  # ... and resumed under the full schedule (steps 0-1 share its LR)
    torch.save(state, tmp_path / "b/run/checkpoint.pt")
    train_toy_world(tmp_path / "b", cfg, progress=False)
    losses = [[r["loss"] for r in csv.DictReader(open(tmp_path / d / "run/loss.csv"))] for d in ("a", "b")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    files = [model / pc.PROJECTION_FILE, tmp_path / "b/model" / pc.PROJECTION_FILE]
    with safe_open(str(files[0]), framework="pt") as f:  # the community format: bf16, keys 0.* and 2.*
        assert sorted(f.keys()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert f.get_tensor("2.weight").dtype == torch.bfloat16
    first, second = (load_pooled_text_proj(f, model_channels=cfg.hidden) for f in files)
    assert torch.count_nonzero(first.linear_out.weight) > 0  # trained away from its zero start
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert load_anima(model, with_vae=False).dit_config.hidden == cfg.hidden


def test_quality_stripping_needs_the_pooled_path_and_the_planted_pair():
    with pytest.raises(ValueError, match="strip_quality > 0 needs pooled_path=True"):
        ToyConfig(strip_quality=0.5)
    with pytest.raises(ValueError, match="strip_quality > 0 needs planted_positive and planted_negative"):
        ToyConfig(strip_quality=0.5, pooled_path=True, planted_positive="score_9")


@pytest.mark.parametrize("w", [1.0, 1.75])
def test_eq3_at_w_on_a_stripped_caption_is_the_training_input_of_quality_1_plus_4w(tmp_path, w):
    """The known answer, end to end: what guided sampling hands the blocks at weight w (prepare -> modulation_for,
    the experiment's path) is exactly the planted vector training gave an image of quality 1 + 4w."""
    from anima_probe.guidance.guided import Guidance, modulation_for, prepare
    from anima_probe.guidance.schedules import Schedule
    from anima_probe.model.text import encode_prompts

    cfg = replace(PROFILES["positive-control-cpu"], **TINY)
    model = train_toy_world(tmp_path / "pc", cfg, progress=False)
    anima = load_anima(model, with_vae=False)
    projection = pc.load_projection(str(model / pc.PROJECTION_FILE), anima)
    torch.nn.init.normal_(projection.linear_out.weight, std=0.1)  # a path that moves (4 tiny steps barely do)
    prompt, pair = "1girl, solo, @kiri_ama", (cfg.planted_positive, cfg.planted_negative)
    gp = prepare(anima, projection, [prompt], *pair)
    guided = modulation_for(gp, Guidance(w, Schedule()), anima.num_blocks, cfg=False)
    with torch.no_grad():  # the training side: one encoding of [caption, p+, p-], pooled as training pools
        tc = encode_prompts(anima, [prompt, *pair])
        pooled = pc.pooled_input(tc.crossattn_emb, tc.t5_mask)  # (3, Dt)
        weight = torch.tensor([pc.planted_weight(1 + 4 * w).item()])
        planted = pc.planted_modulation(projection, pooled[:1], weight, pooled[1:], anima.num_blocks)
    assert not torch.allclose(planted.blocks[0], projection(pooled[:1]))  # the planted term is there ...
    torch.testing.assert_close(planted.final, projection(pooled[:1]))  # ... on the blocks; the final layer: the base
    for got, want in zip([*guided.blocks, guided.final], [*planted.blocks, planted.final], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
