"""The pooled-text cache: a warm read equals a cold one, the key follows the model files, damage is survivable."""

from __future__ import annotations

import shutil

import pytest
import torch

from anima_probe.model.text import encode_prompts
from anima_probe.pipeline import cache as cache_mod
from anima_probe.pipeline.cache import EmbeddingCache, fingerprint
from anima_probe.probes.pooling import pool_named

PROMPTS = ["score_9, 1girl, solo", "scenery, landscape", "score_9, 1girl, solo", "mecha, robot"]


def test_cold_and_warm_reads_equal_a_direct_encoding(tmp_path, tiny_anima):
    c = EmbeddingCache(tmp_path, tiny_anima)
    cold = c.pooled(PROMPTS, progress=False)
    warm = c.pooled(PROMPTS, progress=False)
    tc = encode_prompts(tiny_anima, PROMPTS)
    direct = pool_named(tc.crossattn_emb.float(), tc.t5_mask, "max_padded")
    assert set(cold) == {f"{s}/{n}" for s in cache_mod.SOURCES for n in ("max_padded", "max_tokens", "mean_padded",
                                                                         "mean_tokens", "eos")}
    for key in cold:
        assert torch.equal(cold[key], warm[key])
    torch.testing.assert_close(cold["crossattn_emb/max_padded"], direct)
    assert torch.equal(cold["crossattn_emb/eos"][0], cold["crossattn_emb/eos"][2])  # duplicates read one entry


def test_warm_read_does_not_encode(tmp_path, tiny_anima, monkeypatch):
    c = EmbeddingCache(tmp_path, tiny_anima)
    c.pooled(PROMPTS, progress=False)
    monkeypatch.setattr(EmbeddingCache, "_encode", lambda self, p: pytest.fail(f"re-encoded {p}"))
    c.pooled(PROMPTS[:2], progress=False)


def test_key_changes_with_policy_and_with_a_model_file(tmp_path, tiny_model_dir):
    from anima_probe.model.anima import load_anima

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    a = load_anima(model, with_vae=False)
    base = EmbeddingCache(tmp_path / "c", a).dir
    assert EmbeddingCache(tmp_path / "c", a, empty_prompt="diffusers").dir != base
    assert EmbeddingCache(tmp_path / "c", a).dir == base
    vocab = next((model / "qwen25_tokenizer").glob("*.json"))
    before = fingerprint(model / "qwen25_tokenizer")
    vocab.write_text(vocab.read_text() + " ")
    assert fingerprint(model / "qwen25_tokenizer") != before
    assert EmbeddingCache(tmp_path / "c", a).dir != base


def test_a_damaged_entry_is_recomputed_with_a_warning(tmp_path, tiny_anima):
    c = EmbeddingCache(tmp_path, tiny_anima)
    good = c.pooled(PROMPTS[:1], progress=False)
    c._path(PROMPTS[0]).write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = c.pooled(PROMPTS[:1], progress=False)
    assert torch.equal(good["crossattn_emb/max_padded"], again["crossattn_emb/max_padded"])


def test_an_interrupted_fill_keeps_finished_chunks(tmp_path, tiny_anima, monkeypatch):
    c = EmbeddingCache(tmp_path, tiny_anima, batch_size=1)  # chunks of 4 prompts
    prompts = [f"score_{i}, 1girl" for i in range(1, 9)]
    real, calls = EmbeddingCache._encode, []

    def flaky(self, chunk):
        if calls:
            raise KeyboardInterrupt
        calls.append(chunk)
        return real(self, chunk)

    monkeypatch.setattr(EmbeddingCache, "_encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        c.pooled(prompts, progress=False)
    assert sum(c._path(p).exists() for p in prompts) == 4
    monkeypatch.setattr(EmbeddingCache, "_encode", real)
    assert c.pooled(prompts, progress=False)["crossattn_emb/eos"].shape[0] == 8


def test_key_changes_when_the_pooling_code_changes(tmp_path, tiny_anima, monkeypatch):
    base = EmbeddingCache(tmp_path, tiny_anima).dir
    monkeypatch.setattr(cache_mod, "_code_hash", lambda: "another pooling implementation")
    assert EmbeddingCache(tmp_path, tiny_anima).dir != base
