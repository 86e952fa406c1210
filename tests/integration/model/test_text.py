"""Text encoding on a tiny twin: pad rows are zero, a batch equals its single prompts, the empty-prompt policies."""

from __future__ import annotations

import pytest
import torch

from anima_probe.model.text import encode_prompts


@pytest.fixture(scope="module")
def anima(tiny_anima):
    return tiny_anima


def test_text_pad_rows_zero_and_batch_equals_single(anima):
    prompts = ["score_9, 1girl, solo, smile", "landscape", "a much longer prompt with many many tags, sky, sea"]
    batch = encode_prompts(anima, prompts, batch_size=3)
    assert batch.crossattn_emb.shape == (3, 512, 32)
    for i, p in enumerate(prompts):
        single = encode_prompts(anima, [p])
        n = int(batch.t5_mask[i].sum())
        assert batch.crossattn_emb[i, n:].abs().max() == 0  # zero-padded to 512 rows
        assert batch.prompt_embeds[i][~batch.qwen_mask[i]].abs().max() == 0
        torch.testing.assert_close(batch.crossattn_emb[i], single.crossattn_emb[0], atol=1e-5, rtol=1e-4)


def test_empty_prompt_policies_differ_as_the_references_do(anima):
    comfy = encode_prompts(anima, [""], empty_prompt="comfyui")
    diff = encode_prompts(anima, [""], empty_prompt="diffusers")
    assert comfy.t5_ids[0, 0] == 1 and int(comfy.t5_mask.sum()) == 1  # T5 gets [</s>]
    assert comfy.qwen_mask[0, 0] and not diff.qwen_mask[0, 0]  # ComfyUI reads its pad token, diffusers masks it
    assert not torch.allclose(comfy.crossattn_emb, diff.crossattn_emb)
    with pytest.raises(ValueError, match="empty_prompt"):
        encode_prompts(anima, [""], empty_prompt="other")
