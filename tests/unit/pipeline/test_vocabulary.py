"""The training-vocabulary record: written from captions, found in a model folder, and a prompt set with a token the
model never trained on refused with one line naming the file, row and token."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from anima_probe.model.tokenization import load_tokenizers, tokenize_t5, train_tiny_tokenizers
from anima_probe.pipeline.manifests import MANIFEST_DIR, TOY_MANIFEST_DIR
from anima_probe.pipeline.vocabulary import (
    VOCAB_FILE,
    UntrainedTokens,
    check_prompt_set,
    find_training_vocabulary,
    prompt_set_for,
    read_training_vocabulary,
    write_training_vocabulary,
)

CAPTIONS = ["score_8, masterpiece, 1girl, solo, @kiri_ama", "score_2, lowres, scenery, no humans, @pop_kyu"]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    _, t5_dir = train_tiny_tokenizers(tmp_path_factory.mktemp("tok"), CAPTIONS, t5_vocab=256)
    return load_tokenizers(t5_dir.parent / "qwen25_tokenizer", t5_dir)[1]


def _model(root, t5, vocab: bool = True):
    """A model folder in the single-file layout (diffusion_models/x.safetensors), with or without the record."""
    dit = root / "diffusion_models" / "x.safetensors"
    dit.parent.mkdir(parents=True, exist_ok=True)
    if vocab:
        write_training_vocabulary(root, t5, CAPTIONS + [""], source="two test captions + the empty prompt")
    return SimpleNamespace(files={"dit": dit}, t5_tokenizer=t5, name="tiny")


def test_record_holds_exactly_the_caption_ids_and_is_found_from_the_dit_file(tmp_path, t5):
    anima = _model(tmp_path, t5)
    vocab = find_training_vocabulary(anima)
    assert vocab.t5_ids == {i for row in tokenize_t5(t5, CAPTIONS + [""]) for i in row}
    assert vocab.captions == 3 and vocab.path == tmp_path / VOCAB_FILE
    assert find_training_vocabulary(_model(tmp_path / "real", t5, vocab=False)) is None  # the real Anima: none
    (tmp_path / VOCAB_FILE).write_text(json.dumps({"t5_ids": []}))
    with pytest.raises(ValueError, match=f"{VOCAB_FILE}: 't5_ids' must be a non-empty list"):
        read_training_vocabulary(tmp_path / VOCAB_FILE)


def test_trained_prompts_pass_with_share_zero_and_an_untrained_token_is_refused_by_file_row_and_token(tmp_path, t5):
    anima = _model(tmp_path, t5)
    ok = check_prompt_set(anima, [("a.csv:2", "masterpiece, @pop_kyu, scenery"), ("a.csv:3", "solo")], "Set a")
    assert ok.share == 0.0 and ok.tokens > 0 and "0.0% untrained" in ok.describe()
    with pytest.raises(UntrainedTokens) as err:
        check_prompt_set(anima, [("a.csv:2", "masterpiece, solo"), ("a.csv:3", "1girl, holding umbrella")])
    line = str(err.value)
    assert "\n" not in line and line.startswith("a.csv:3: token ")
    assert "in tag 'holding umbrella'" in line and "never occurs in the 3 captions tiny trained on" in line
    unknown = check_prompt_set(_model(tmp_path / "real", t5, vocab=False), [("b", "holding umbrella")], "Set b")
    assert unknown.share is None and "unknown" in unknown.describe()  # no record: reported, not refused


def test_the_folder_that_fits_a_model(tmp_path, t5):
    assert prompt_set_for(_model(tmp_path, t5), None) == TOY_MANIFEST_DIR  # records its vocabulary: the toy world's
    assert prompt_set_for(_model(tmp_path / "real", t5, vocab=False), None) == MANIFEST_DIR  # Anima-style tags
    assert prompt_set_for(_model(tmp_path, t5), str(MANIFEST_DIR)) == MANIFEST_DIR  # an explicit folder wins
