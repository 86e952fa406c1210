"""CLIP-L text loader: single-file and folder layouts agree, 77-token truncation, strict errors, tiny stand-in."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima_probe.model.clip import EOS, MAX_LENGTH, load_clip, load_clip_tokenizer, write_tiny_clip
from anima_probe.model.files import ModelFileError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="module")
def clip(tiny):
    return load_clip(tiny)


PROMPTS = ["score_9, masterpiece, 1girl, solo, @kiri_ama", "worst quality, mecha", "", "a cat on a mat"]


def test_tokenizer_layout_and_no_unknown_pieces(clip):
    tok = clip.tokenizer
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2  # as the real vocab: EOS last
    ids = clip.token_ids(["Ünïcödé 日本語 🎉 MASTERPIECE"])[0]
    n = int((ids != tok.eos_token_id).sum())
    # every byte is in the vocabulary: no unknown piece (CLIP's unknown is EOS) before the real EOS
    assert ids[0] == tok.bos_token_id and n > 10 and (ids[1:n] < tok.bos_token_id).all()
    assert tok.decode(ids[1:n]).strip() == "ünïcödé 日本語 🎉 masterpiece"  # lower-cased, byte-exact otherwise
    assert clip.token_ids(["masterpiece"])[0, 1] == tok.convert_tokens_to_ids("masterpiece</w>")


def test_truncation_at_77(clip):
    long = ", ".join(f"tag{i}" for i in range(60))  # ~240 tokens
    ids = clip.token_ids([long])[0]
    plain = clip.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(plain) > 2 * MAX_LENGTH
    assert ids.shape == (MAX_LENGTH,) and ids[-1] == clip.tokenizer.eos_token_id
    assert ids[1:-1].tolist() == plain[: MAX_LENGTH - 2]
    a, b = clip.pooled([long, long + ", and much more text that falls past the end"])
    assert torch.equal(a, b)  # the tail past 77 tokens cannot matter


def test_pooled_is_first_eos_state_and_ignores_padding(clip):
    pooled = clip.pooled(PROMPTS)
    assert pooled.shape == (len(PROMPTS), clip.dim) and pooled.dtype == torch.float32
    for i, p in enumerate(PROMPTS):
        ids = clip.token_ids([p])[0]
        n = int((ids == clip.tokenizer.eos_token_id).nonzero()[0]) + 1  # up to and including the first EOS
        with torch.no_grad():
            short = clip.model(input_ids=ids[:n][None]).last_hidden_state[0, -1]  # unpadded, EOS is last
        torch.testing.assert_close(pooled[i], short, atol=1e-5, rtol=1e-5)  # causal: padding is invisible
    assert torch.equal(clip.pooled(PROMPTS[:1]), pooled[:1])  # batch composition does not matter
    assert (pooled[0] - pooled[1]).abs().max() > 1e-3


def test_folder_layout_and_prefix_give_the_same_vectors(clip, tiny, tmp_path):
    want = clip.pooled(PROMPTS)
    hf = tmp_path / "hf"
    clip.model.save_pretrained(hf)
    clip.tokenizer.save_pretrained(hf)
    torch.testing.assert_close(load_clip(hf).pooled(PROMPTS), want, atol=0, rtol=0)
    # an SD-style prefix plus the projection head that full CLIP files carry
    state = {"cond_stage_model.transformer." + k: v for k, v in load_file(tiny).items()}
    state["cond_stage_model.transformer.text_projection.weight"] = torch.eye(clip.dim)
    (tmp_path / "sd" / "tokenizer").mkdir(parents=True)
    save_file(state, str(tmp_path / "sd" / "model.safetensors"))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny.parent / "tokenizer" / name, tmp_path / "sd" / "tokenizer" / name)
    torch.testing.assert_close(load_clip(tmp_path / "sd").pooled(PROMPTS), want, atol=0, rtol=0)


def _rewrite(tiny, tmp_path, edit):
    state = load_file(tiny)
    edit(state)
    out = tmp_path / "bad" / "clip_l.safetensors"
    out.parent.mkdir()
    shutil.copytree(tiny.parent / "tokenizer", out.parent / "tokenizer")
    save_file(state, str(out))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("text_model.encoder.layers.1.mlp.fc2.bias"), "1 missing: text_model.encoder.layers.1.mlp.fc2"),
    (lambda s: s.__setitem__("text_model.final_layer_norm.bias", torch.zeros(7)), "final_layer_norm.bias [7]"),
    (lambda s: s.__setitem__("vision_model.post_layernorm.weight", torch.zeros(3)), "vision_model.post_layernorm"),
    (lambda s: s.pop("text_model.embeddings.token_embedding.weight"), "not a CLIP text model file"),
    (lambda s: s.__setitem__("text_model.embeddings.position_embedding.weight", torch.zeros(20, 128)),
     "has 20 positions"),
])
def test_bad_files_name_the_file_and_key(tiny, tmp_path, edit, message):
    bad = _rewrite(tiny, tmp_path, edit)
    with pytest.raises(ModelFileError, match="bad/clip_l.safetensors") as err:
        load_clip(bad)
    assert message in str(err.value)


def test_missing_pieces_are_clear(tiny, tmp_path):
    (tmp_path / "lone.safetensors").write_bytes(tiny.read_bytes())
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer folder next to it"):
        load_clip(tmp_path / "lone.safetensors")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "clip.safetensors").write_bytes(tiny.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="trunc/clip.safetensors"):
        load_clip(tmp_path / "trunc" / "clip.safetensors", tokenizer=tiny.parent / "tokenizer")
    (tmp_path / "tok").mkdir()
    shutil.copy(tiny.parent / "tokenizer" / "vocab.json", tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="missing merges.txt"):
        load_clip_tokenizer(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="no such CLIP file"):
        load_clip(tmp_path / "nothing.safetensors")
    assert EOS in load_clip_tokenizer(tiny.parent / "tokenizer").get_vocab()


def test_tiny_clip_is_deterministic(tiny, tmp_path):
    again = write_tiny_clip(tmp_path, seed=0)
    a, b = load_file(again), load_file(tiny)  # (the header's metadata order is not fixed: compare tensors)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again.parent / "tokenizer" / "vocab.json").read_text() == (tiny.parent / "tokenizer" / "vocab.json").read_text()
    assert (again.parent / "tokenizer" / "merges.txt").read_text() == (tiny.parent / "tokenizer" / "merges.txt").read_text()
    other = load_file(write_tiny_clip(tmp_path / "s1", seed=1))
    emb = "text_model.embeddings.token_embedding.weight"
    assert not torch.equal(other[emb], b[emb])
