"""Which of a prompt's tokens did the model ever train on?

A model trained from scratch on a known caption set (the toy world) learns an adapter embedding row only for the T5 ids
its captions contain; every other row keeps its random initialisation and never receives a gradient. A probe that
feeds such tokens compares a trained side with an untrained one (`umbrella` was in the old neutral null pool and never
in a toy caption). So the trainer records the ids of its training captions in the model folder
(``training_vocab.json``) and a prompt set is checked against them before anything is encoded: `check_prompt_set`
reports the share of untrained tokens and refuses a set that has any, naming the file, row and token.

Only the T5 ids are recorded: they index the adapter's embedding rows, the one per-token parameter the toy model
trains. The Qwen3 encoder is frozen (random in the toy world, as Anima's is frozen), so no Qwen id is trained or
untrained in that sense. The real Anima records no vocabulary: its share is unknown (None), not zero.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anima_probe.errors import InputError
from anima_probe.model.tokenization import tokenize_t5
from anima_probe.pipeline.atomic import atomic_write_json
from anima_probe.pipeline.manifests import (
    MANIFEST_DIR,
    TOY_MANIFEST_DIR,
    load_prompt_sets,
    prompt_rows,
    repo_path,
)

VOCAB_FILE = "training_vocab.json"
DIT_SUBDIRS = ("diffusion_models", "split_files/diffusion_models", "models/diffusion_models")


class UntrainedTokens(InputError):
    """A prompt set holds tokens the model never saw in training."""


@dataclass(frozen=True)
class TrainingVocabulary:
    """The T5 ids of a model's training captions, read from ``training_vocab.json``."""

    t5_ids: frozenset[int]
    source: str  # where the captions came from, e.g. "toyworld.world.captions(n=12000, seed=0) + empty prompt"
    captions: int
    path: Path


def write_training_vocabulary(model_dir: str | Path, t5_tokenizer, captions: Sequence[str], source: str) -> Path:
    """Record the T5 ids of `captions` (include "" when caption dropout trained the empty prompt) atomically."""
    ids = sorted({i for row in tokenize_t5(t5_tokenizer, list(captions)) for i in row})
    record = {"source": source, "captions": len(captions), "t5_ids": ids}
    return atomic_write_json(Path(model_dir) / VOCAB_FILE, record)


def read_training_vocabulary(path: str | Path) -> TrainingVocabulary:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    ids = data.get("t5_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise InputError(f"{path}: 't5_ids' must be a non-empty list of token ids")
    return TrainingVocabulary(frozenset(ids), str(data.get("source", "")), int(data.get("captions", 0)), path)


def model_root(dit: Path) -> Path:
    """The model folder a DiT file or diffusers folder was found in (`anima.find_model_files`' layouts: a diffusers
    folder, or ``diffusion_models/``, ``split_files/diffusion_models/``, ``models/diffusion_models/`` under it);
    the file's own folder for any other path."""
    dit = Path(dit)
    if dit.is_dir():
        return dit
    for sub in DIT_SUBDIRS:
        parts = Path(sub).parts
        if dit.parent.parts[-len(parts):] == parts:
            return Path(*dit.parent.parts[: -len(parts)])
    return dit.parent


def find_training_vocabulary(anima) -> TrainingVocabulary | None:
    """The record in the model's folder (`model_root`), or None when the model records none (the real Anima)."""
    path = model_root(anima.files["dit"]) / VOCAB_FILE
    return read_training_vocabulary(path) if path.is_file() else None


def untrained_tokens(vocab: TrainingVocabulary, t5_tokenizer, prompts: Sequence[tuple[str, str]]
                     ) -> tuple[list[tuple[str, str]], int]:
    """For (where, text) prompts: every (where, "'piece' in tag 'tag'") whose id is not in `vocab`, and the
    number of tokens checked (the appended </s> included, as the adapter sees it)."""
    found, total = [], 0
    for where, text in prompts:
        enc = t5_tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        total += len(enc["input_ids"])
        for i, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if i not in vocab.t5_ids:
                tag = text[text.rfind(",", 0, start) + 1:(text.find(",", end) + 1 or len(text) + 1) - 1].strip()
                found.append((where, f"{t5_tokenizer.convert_ids_to_tokens(i)!r} in tag {tag!r}"))
    return found, total


@dataclass(frozen=True)
class PromptCheck:
    """What `check_prompt_set` found: the share of untrained tokens (None: the model records no vocabulary)."""

    what: str  # the prompt set, as a report names it
    share: float | None
    tokens: int
    vocabulary: TrainingVocabulary | None

    def describe(self) -> str:
        """One line for a report: "<what>: N T5 tokens, 0.0% untrained (...)", or why the share is unknown."""
        if self.vocabulary is None:
            return (f"{self.what}: {self.tokens} T5 tokens; the model records no training vocabulary, so the share "
                    "of untrained tokens is unknown.")
        return (f"{self.what}: {self.tokens} T5 tokens, {self.share:.1%} untrained (checked against the model's "
                f"{self.vocabulary.path.name}: {self.vocabulary.captions} training captions).")


def check_prompt_set(anima, prompts: Sequence[tuple[str, str]], what: str = "prompts") -> PromptCheck:
    """Check (where, text) prompts against the model's training vocabulary. A model that records one refuses any
    untrained token with `UntrainedTokens`, one line naming the file, row and token; the real Anima records none,
    so its share is unknown (None), not zero."""
    vocab = find_training_vocabulary(anima)
    total = sum(len(ids) for ids in tokenize_t5(anima.t5_tokenizer, [text for _, text in prompts]))
    if vocab is None:
        return PromptCheck(what, None, total, None)
    found, total = untrained_tokens(vocab, anima.t5_tokenizer, prompts)
    if found:
        where, token = found[0]
        raise UntrainedTokens(
            f"{where}: token {token} never occurs in the {vocab.captions} captions {anima.name} trained on "
            f"({vocab.path.name}; {len(found)} of this prompt set's {total} tokens, {len(found) / total:.1%}, "
            "are untrained); use prompts from its training vocabulary")
    return PromptCheck(what, 0.0, total, vocab)


def prompt_set_for(anima, folder: str | None) -> Path:
    """The prompt-set folder a run uses: `folder` when given; otherwise the toy world's own
    (``data/manifests/toyworld``) for a model that records its training vocabulary, ``data/manifests``
    (Anima-style tags) for any other."""
    if folder is not None:
        return repo_path(folder)
    return TOY_MANIFEST_DIR if find_training_vocabulary(anima) is not None else MANIFEST_DIR


def checked_prompt_sets(anima, folder: str | None) -> tuple[dict, PromptCheck]:
    """`load_prompt_sets` of the folder that fits the model (`prompt_set_for`), refused before anything is encoded
    when it holds tokens the model never trained on; the check is returned for the run's report."""
    sets = load_prompt_sets(prompt_set_for(anima, folder))
    what = "Prompt set " + ", ".join(sorted(set(sets["files"].values())))
    return sets, check_prompt_set(anima, prompt_rows(sets), what)
