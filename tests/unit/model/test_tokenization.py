"""Tokeniser stand-ins follow Anima's special-token rules, train reproducibly, and are found in every
layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from anima_probe.model.tokenization import (
    QWEN_PAD_TOKEN,
    find_tokenizer_dirs,
    load_tokenizers,
    qwen_pad_id,
    tokenize_qwen,
    tokenize_t5,
    train_tiny_tokenizers,
)

PROMPTS = ["1girl, solo, long hair, looking at viewer, masterpiece", "a cat on a windowsill at night"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny_tokenizers(tmp_path_factory.mktemp("tok"), corpus=["a corpus line about cats"])


@pytest.fixture(scope="module")
def toks(tiny_dirs):
    return load_tokenizers(*tiny_dirs)


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_is_byte_identical_for_same_corpus_and_seed(tmp_path):
    corpus = ["blue sky, white clouds", "ナルト, 1boy"]
    first = train_tiny_tokenizers(tmp_path / "a", corpus, seed=3)
    second = train_tiny_tokenizers(tmp_path / "b", corpus, seed=3)
    other_seed = train_tiny_tokenizers(tmp_path / "c", corpus, seed=4)
    files_a, files_b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert [d.name for d in first] == ["qwen25_tokenizer", "t5_tokenizer"] == [d.name for d in second]
    assert set(files_a) == {
        "qwen25_tokenizer/tokenizer.json", "qwen25_tokenizer/vocab.json", "qwen25_tokenizer/merges.txt",
        "qwen25_tokenizer/tokenizer_config.json", "t5_tokenizer/tokenizer.json",
        "t5_tokenizer/tokenizer_config.json", "t5_tokenizer/special_tokens_map.json",
    }
    assert files_a == files_b
    # The seed draws the built-in corpus, so another seed gives other merges.
    assert (other_seed[0] / "merges.txt").read_bytes() != files_a["qwen25_tokenizer/merges.txt"]


def test_training_is_byte_identical_across_processes(tmp_path):
    """Rust randomises hash order per process; the Unigram trainer leaks it unless the output is made
    canonical."""
    corpus = ["blue sky, white clouds", "ナルト, 1boy"]
    train_tiny_tokenizers(tmp_path / "here", corpus, seed=1)
    code = ("import sys; from anima_probe.model.tokenization import train_tiny_tokenizers as t; "
            "t(sys.argv[1], ['blue sky, white clouds', 'ナルト, 1boy'], seed=1)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True, timeout=60)
    assert _file_bytes(tmp_path / "here") == _file_bytes(tmp_path / "there")


def test_vocab_sizes_and_pad_token_position(tiny_dirs, toks):
    qwen, t5 = toks
    assert len(qwen) == 512 and len(t5) == 256
    bpe_vocab = json.loads((tiny_dirs[0] / "vocab.json").read_text())
    # As in the real Qwen vocabulary, the pad token is the first id after the BPE tokens, not in vocab.json.
    assert QWEN_PAD_TOKEN not in bpe_vocab
    assert qwen_pad_id(qwen) == qwen.pad_token_id == len(bpe_vocab) == 511
    assert qwen.convert_ids_to_tokens(qwen_pad_id(qwen)) == QWEN_PAD_TOKEN
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)


def test_qwen_adds_no_special_tokens_and_round_trips(toks):
    qwen, _ = toks
    ids = tokenize_qwen(qwen, PROMPTS + ["héllo 東京"])
    assert qwen.bos_token is None
    assert ids[0] == qwen(PROMPTS[0])["input_ids"]  # the tokenizer's own default adds nothing either
    pad = qwen_pad_id(qwen)
    for prompt, row in zip(PROMPTS + ["héllo 東京"], ids, strict=True):
        assert pad not in row and row
        assert qwen.decode(row) == prompt  # byte-level BPE is lossless, non-ASCII included
    assert len(ids[0]) < len(PROMPTS[0])  # merges were learnt: fewer tokens than characters


def test_t5_appends_eos_once_and_maps_unknown_characters(toks):
    _, t5 = toks
    rows = tokenize_t5(t5, PROMPTS + ["東"])
    for row in rows:
        assert row[-1] == 1 and row.count(1) == 1 and 0 not in row
    assert rows[0] == t5(PROMPTS[0])["input_ids"]  # same as the tokenizer's own post-processor
    assert t5.decode(rows[0], skip_special_tokens=True) == PROMPTS[0]
    # A character never seen in training is <unk> after the word-start piece, as the real T5 does with kanji.
    assert rows[2] == [t5.convert_tokens_to_ids("▁"), 2, 1]


def test_empty_prompt(toks):
    qwen, t5 = toks
    assert tokenize_qwen(qwen, ["", "solo"])[0] == []
    assert tokenize_t5(t5, ["", "solo"])[0] == [1]
    assert tokenize_qwen(qwen, []) == [] and tokenize_t5(t5, []) == []


def test_max_length_truncation(toks):
    qwen, t5 = toks
    full_q, full_t = tokenize_qwen(qwen, PROMPTS[:1])[0], tokenize_t5(t5, PROMPTS[:1])[0]
    assert tokenize_qwen(qwen, PROMPTS[:1], max_length=3) == [full_q[:3]]
    assert tokenize_t5(t5, PROMPTS[:1], max_length=4) == [full_t[:3] + [1]]
    assert tokenize_t5(t5, PROMPTS[:1], max_length=1) == [[1]]
    assert tokenize_t5(t5, PROMPTS[:1], max_length=10_000) == [full_t]
    with pytest.raises(ValueError, match="max_length=0"):
        tokenize_t5(t5, PROMPTS, max_length=0)
    with pytest.raises(TypeError, match="list of strings"):
        tokenize_qwen(qwen, "1girl")


def test_raw_tokenizers_json_matches_transformers(tiny_dirs, toks):
    """The saved tokenizer.json, used without transformers, gives the same ids: the training pipeline is the
    one transformers rebuilds on load."""
    raw_q = Tokenizer.from_file(str(tiny_dirs[0] / "tokenizer.json"))
    raw_t = Tokenizer.from_file(str(tiny_dirs[1] / "tokenizer.json"))
    for prompt in PROMPTS:
        assert raw_q.encode(prompt).ids == tokenize_qwen(toks[0], [prompt])[0]
        assert raw_t.encode(prompt).ids == tokenize_t5(toks[1], [prompt])[0]


def test_qwen_folder_without_tokenizer_json_loads_like_comfyui(tiny_dirs, toks, tmp_path):
    """ComfyUI's qwen25_tokenizer ships only vocab.json, merges.txt and tokenizer_config.json."""
    bare = tmp_path / "qwen25_tokenizer"
    shutil.copytree(tiny_dirs[0], bare)
    (bare / "tokenizer.json").unlink()
    qwen, _ = load_tokenizers(bare, tiny_dirs[1])
    assert tokenize_qwen(qwen, PROMPTS) == tokenize_qwen(toks[0], PROMPTS)
    assert qwen_pad_id(qwen) == 511


def test_incomplete_folders_name_the_missing_file(tiny_dirs, tmp_path):
    qwen_dir = tmp_path / "qwen"
    shutil.copytree(tiny_dirs[0], qwen_dir)
    for name in ("tokenizer.json", "merges.txt"):
        (qwen_dir / name).unlink()
    qwen_missing = r"Qwen tokenizer folder incomplete: .*qwen.*missing: merges\.txt"
    with pytest.raises(FileNotFoundError, match=qwen_missing):
        load_tokenizers(qwen_dir, tiny_dirs[1])
    empty_t5 = tmp_path / "t5"
    empty_t5.mkdir()
    t5_missing = r"T5 tokenizer folder incomplete: .*t5 is missing tokenizer\.json"
    with pytest.raises(FileNotFoundError, match=t5_missing):
        load_tokenizers(tiny_dirs[0], empty_t5)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_tokenizers(tmp_path / "nowhere", tiny_dirs[1])


def test_t5_with_wrong_special_ids_is_rejected(tiny_dirs, tmp_path):
    t5_dir = tmp_path / "t5_tokenizer"
    shutil.copytree(tiny_dirs[1], t5_dir)
    config = json.loads((t5_dir / "tokenizer_config.json").read_text())
    config["eos_token"] = "<unk>"
    (t5_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"T5 tokenizer in .*t5_tokenizer has special ids .*'</s>': 2"):
        load_tokenizers(tiny_dirs[0], t5_dir)


@pytest.mark.parametrize(
    ("qwen_rel", "t5_rel"),
    [
        ("qwen25_tokenizer", "t5_tokenizer"),
        ("tokenizer", "t5_tokenizer"),
        ("comfy/text_encoders/qwen25_tokenizer", "comfy/text_encoders/t5_tokenizer"),
    ],
    ids=["model-folder", "diffusers", "comfyui"],
)
def test_discovery_in_each_layout(tiny_dirs, tmp_path, qwen_rel, t5_rel):
    root = tmp_path / "root"
    shutil.copytree(tiny_dirs[0], root / qwen_rel)
    shutil.copytree(tiny_dirs[1], root / t5_rel)
    (root / "transformer").mkdir()  # unrelated siblings do not confuse the search
    found = find_tokenizer_dirs(root)
    assert found == (root / qwen_rel, root / t5_rel)
    qwen, t5 = load_tokenizers(*found)
    assert tokenize_t5(t5, [""]) == [[1]] and qwen_pad_id(qwen) == 511


def test_discovery_error_lists_every_place_looked(tiny_dirs, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_dirs[0], root / "qwen25_tokenizer")  # Qwen present, T5 absent
    with pytest.raises(FileNotFoundError) as err:
        find_tokenizer_dirs(root)
    message = str(err.value)
    for place in ("model folder", "diffusers folder", "ComfyUI install", "comfy/text_encoders/t5_tokenizer",
                  str(root / "tokenizer")):
        assert place in message
    assert f"no folder {root / 't5_tokenizer'}" in message
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        find_tokenizer_dirs(tmp_path / "missing")


def test_bad_training_arguments(tmp_path):
    with pytest.raises(ValueError, match="qwen_vocab=100 is too small"):
        train_tiny_tokenizers(tmp_path, qwen_vocab=100)
    with pytest.raises(ValueError, match=r"t5_vocab=20 cannot train on this corpus \(\d+ distinct"):
        train_tiny_tokenizers(tmp_path, t5_vocab=20)
    with pytest.raises(TypeError, match="entry 1 is int"):
        train_tiny_tokenizers(tmp_path, corpus=["ok", 3])


def test_t5_folder_with_real_t5_config_keys_loads_offline(tiny_dirs, tmp_path):
    """The real t5-v1_1 config (as ComfyUI ships it) names a hub id and 100 sentinels; loading stays local
    (the conftest blocks the network) and the sentinels come after the vocabulary, leaving 0/1/2 alone."""
    t5_dir = tmp_path / "t5_tokenizer"
    shutil.copytree(tiny_dirs[1], t5_dir)
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    config = {"additional_special_tokens": sentinels, "eos_token": "</s>", "extra_ids": 100,
              "model_max_length": 512, "name_or_path": "google/t5-v1_1-xxl", "pad_token": "<pad>",
              "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>"}
    (t5_dir / "tokenizer_config.json").write_text(json.dumps(config))
    special_map = {"additional_special_tokens": sentinels, "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>"}
    (t5_dir / "special_tokens_map.json").write_text(json.dumps(special_map))
    _, t5 = load_tokenizers(tiny_dirs[0], t5_dir)
    assert len(t5) == 256 + 100
    assert t5.convert_tokens_to_ids("<extra_id_0>") >= 256
    assert tokenize_t5(t5, ["", "solo"])[0] == [1]
