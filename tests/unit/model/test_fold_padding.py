"""Folding the identical padding rows of the cross-attention context is the 512-row attention, computed once."""

import math

import torch

from anima_probe.model.anima import dit_velocity, fold_padding
from anima_probe.model.text import encode_prompts


def test_fold_keeps_the_rows_before_the_tail_and_weighs_the_tail_by_its_count():
    ctx = torch.zeros(2, 512, 4)
    ctx[0, :3] = 1.0
    ctx[1, :7] = 2.0  # the longer prompt decides where the shared tail starts
    folded, bias = fold_padding(ctx)
    assert folded.shape == (2, 8, 4)
    assert torch.equal(folded, ctx[:, :8])
    assert torch.allclose(bias[:, 7], torch.full((2,), math.log(505)))
    assert torch.count_nonzero(bias[:, :7]) == 0


def test_a_context_without_a_repeated_tail_is_left_alone():
    ctx = torch.randn(2, 512, 4)
    folded, bias = fold_padding(ctx)
    assert folded is ctx and bias is None


def test_folded_velocity_matches_the_512_row_attention(tiny_anima):
    ctx = encode_prompts(tiny_anima, ["1girl, solo", "a much longer prompt, with several more tags, outdoors"])
    ctx = ctx.crossattn_emb.repeat(2, 1, 1)
    assert fold_padding(ctx)[0].shape[1] < 100  # the fold is not vacuous on these prompts
    torch.manual_seed(1)
    x_t, sigma = torch.randn(4, 16, 16, 16), torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_t = x_t[:, : tiny_anima.transformer.config.in_channels - 1]
    with torch.no_grad():
        folded = dit_velocity(tiny_anima.transformer, x_t, sigma, ctx)
        full = dit_velocity(tiny_anima.transformer, x_t, sigma, ctx, fold=False)
    assert torch.allclose(folded, full, atol=1e-5, rtol=1e-4), (folded - full).abs().max()


def test_folded_gradients_match_the_512_row_attention(tiny_anima):
    """Training goes through the fold too: the weights get the same gradient, the real rows theirs, and the tail's
    representative the sum of what its copies got (the padding is a constant, so that gradient goes nowhere)."""
    ctx = encode_prompts(tiny_anima, ["1girl, solo, smile"]).crossattn_emb.clone().requires_grad_(True)
    kept = fold_padding(ctx.detach())[0].shape[1] - 1
    x_t = torch.randn(1, tiny_anima.transformer.config.in_channels - 1, 16, 16)
    sigma = torch.tensor([0.5])
    weight = tiny_anima.transformer.transformer_blocks[0].attn2.to_k.weight
    weight.requires_grad_(True)
    grads = []
    try:
        for fn in (lambda: dit_velocity(tiny_anima.transformer, x_t, sigma, ctx),
                   lambda: dit_velocity(tiny_anima.transformer, x_t, sigma, ctx, fold=False)):
            ctx.grad, weight.grad = None, None
            fn().square().sum().backward()
            grads.append((ctx.grad[:, :kept].clone(), ctx.grad[:, kept:].sum(1), weight.grad.clone()))
    finally:
        weight.requires_grad_(False)
        weight.grad = None
    for folded, full in zip(*grads, strict=True):  # gradients reach ~1e3 here: float32's 1e-6 relative
        torch.testing.assert_close(folded, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))
