"""Tokenisers for Anima's two text paths: which token ids does a prompt become?

Anima tokenises every prompt twice (docs/anima.md, "Text path"): a Qwen2 byte-level BPE tokeniser feeds the Qwen3
text encoder (no BOS, no EOS, no chat template; pad ``<|endoftext|>``), and a T5 Unigram tokeniser gives the
target ids of the LLM adapter (``<pad>``=0, ``</s>``=1 appended to every prompt, ``<unk>``=2). Probes that
compare prompts token by token need exactly these ids, so this module

- finds a user's real tokeniser folders (model folder, diffusers folder, or a ComfyUI install),
- loads them as transformers tokenisers from local files only, checking the special-token rules,
- encodes prompts the way ComfyUI does (no padding, no truncation unless asked),
- trains tiny stand-ins offline, in the same folder formats, so tests never need the real vocabularies.

The tiny tokenisers reproduce the real ones' *rules* (pipeline, special tokens and their ids), not their
vocabularies: the Qwen stand-in has a few hundred merges instead of 151643 tokens, and the T5 stand-in has no
NFKC normaliser (it would need a sentencepiece charsmap) and no ``<extra_id_N>`` sentinels.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tk_trainers

from anima_probe.errors import InputError, MissingFileError

QWEN_DIR_NAME = "qwen25_tokenizer"  # ComfyUI's folder name, also used for the tiny stand-in
T5_DIR_NAME = "t5_tokenizer"
QWEN_PAD_TOKEN = "<|endoftext|>"  # id 151643 in the real vocabulary
T5_PAD_ID, T5_EOS_ID, T5_UNK_ID = 0, 1, 2

# The split regex transformers' Qwen2Tokenizer rebuilds its pipeline with; training with the same pipeline
# means the raw `tokenizers` object and the loaded transformers tokeniser give identical ids.
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Where each layout keeps the (Qwen, T5) folders, relative to the root handed to `find_tokenizer_dirs`.
_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("model folder", QWEN_DIR_NAME, T5_DIR_NAME),
    ("diffusers folder", "tokenizer", T5_DIR_NAME),
    ("ComfyUI install", f"comfy/text_encoders/{QWEN_DIR_NAME}", f"comfy/text_encoders/{T5_DIR_NAME}"),
)

# Built-in training text: Danbooru-style tags plus a few captions, so a tiny tokeniser trained with no corpus
# still splits the prompts the experiments use into plausible multi-character pieces.
_TAG_GROUPS: tuple[tuple[str, ...], ...] = (
    ("1girl", "1boy", "2girls", "multiple girls", "solo", "solo focus", "no humans", "animal focus"),
    ("long hair", "short hair", "medium hair", "twintails", "ponytail", "braid", "ahoge", "bangs",
     "blonde hair", "black hair", "silver hair", "pink hair", "blue hair", "red hair", "brown hair"),
    ("blue eyes", "red eyes", "green eyes", "yellow eyes", "purple eyes", "heterochromia", "closed eyes"),
    ("smile", "open mouth", "blush", "looking at viewer", "looking away", "expressionless", "crying",
     "angry", "surprised", ":d", ">_<", "^_^"),
    ("school uniform", "serafuku", "dress", "white dress", "hoodie", "armor", "kimono", "maid",
     "witch hat", "glasses", "thighhighs", "gloves", "ribbon", "hair ornament", "jacket", "skirt"),
    ("standing", "sitting", "lying", "walking", "running", "holding sword", "holding umbrella",
     "arms up", "hand on hip", "from above", "from below", "from side", "cowboy shot", "full body",
     "upper body", "close-up", "portrait"),
    ("outdoors", "indoors", "sky", "cloud", "night", "night sky", "starry sky", "sunset", "city",
     "forest", "beach", "ocean", "classroom", "bedroom", "cherry blossoms", "snow", "rain", "flower field",
     "simple background", "white background", "gradient background"),
    ("masterpiece", "best quality", "high quality", "highres", "absurdres", "very aesthetic",
     "newest", "year 2024", "safe", "sensitive", "score_9", "worst quality", "low quality", "lowres",
     "bad anatomy", "bad hands", "jpeg artifacts", "watermark", "signature", "blurry"),
    ("anime coloring", "flat color", "watercolor (medium)", "sketch", "monochrome", "greyscale",
     "chromatic aberration", "depth of field", "lens flare", "cinematic lighting", "@artist_name"),
)
_CAPTIONS: tuple[str, ...] = (
    "A girl with long silver hair stands in a field of flowers at sunset, looking back over her shoulder.",
    "An orange cat sleeps on a windowsill while rain falls outside.",
    "Two girls in school uniforms share an umbrella on a crowded city street at night.",
    "A knight in dark armor holds a glowing sword in front of a ruined castle.",
    "Close-up portrait of a smiling boy with messy brown hair, soft lighting, 4k.",
    "The quick brown fox jumps over the lazy dog. 0123456789 (parentheses) [brackets] {braces}",
)


def _builtin_corpus(seed: int, n_prompts: int = 400) -> list[str]:
    """Danbooru-style tag prompts drawn with `seed`, plus fixed captions."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n_prompts):
        tags = [rng.choice(group) for group in _TAG_GROUPS if rng.random() < 0.8]
        prompts.append(", ".join(tags))
    return prompts + list(_CAPTIONS)


def _train_qwen(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with Qwen2's pipeline; `<|endoftext|>` is appended after the BPE vocabulary, as in
    the real tokeniser, so it lives only in the added tokens and never in vocab.json."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = tk_trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # leave one slot for the pad token
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: Qwen has no <unk>
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(QWEN_PAD_TOKEN, special=True, normalized=False)])
    return tok


def _train_t5(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Unigram with the pipeline transformers' T5Tokenizer rebuilds: whitespace split + metaspace, ids
    <pad>=0, </s>=1, <unk>=2 first, and `</s>` appended by the post-processor."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = tk_trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    try:
        tok.train_from_iterator(corpus, trainer)
    except Exception as err:  # the Rust trainer raises a bare Exception
        n_chars = len({ch for text in corpus for ch in text if not ch.isspace()})
        raise InputError(f"t5_vocab={vocab_size} cannot train on this corpus ({n_chars} distinct characters "
                         f"plus 3 special tokens): {err}") from err
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", T5_EOS_ID)]
    )
    return _canonical_unigram(tok)


def _canonical_unigram(tok: Tokenizer, decimals: int = 6) -> Tokenizer:
    """Make the trained Unigram vocabulary independent of Rust's per-process hash order.

    That order leaks in three ways: the last bits of the EM scores, the order of tied pieces, and which of
    the characters that pruning dropped (and the trainer adds back, at the lowest score plus 1e-4 per
    character, in hash-set order) gets which score. So: round scores, give every single character in that
    added-back band the band's lowest score, and order pieces after <pad>, </s>, <unk> by (score desc, text).
    Ids change; segmentations change only among those rare characters, which then score alike.
    """
    spec = json.loads(tok.to_str())
    specials, rest = spec["model"]["vocab"][:3], spec["model"]["vocab"][3:]
    scores = {piece: round(score, decimals) for piece, score in rest}
    lowest = min(scores.values())
    n_chars = sum(len(piece) == 1 for piece in scores)
    band_top = lowest + 1e-4 * n_chars + 10.0 ** -decimals
    for piece, score in scores.items():
        if len(piece) == 1 and score <= band_top:
            scores[piece] = lowest
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    spec["model"]["vocab"] = specials + [list(item) for item in ordered]
    return Tokenizer.from_str(json.dumps(spec))


def _added_token_entry(content: str) -> dict[str, object]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_qwen(tok: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)
    tok.model.save(str(out))  # vocab.json + merges.txt, the files ComfyUI's copy ships
    pad_id = tok.token_to_id(QWEN_PAD_TOKEN)
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(pad_id): _added_token_entry(QWEN_PAD_TOKEN)},
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": QWEN_PAD_TOKEN,
        "errors": "replace", "model_max_length": 131072, "pad_token": QWEN_PAD_TOKEN,
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    })


def _save_t5(tok: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _write_json(out / "special_tokens_map.json", {**specials, "additional_special_tokens": []})
    _write_json(out / "tokenizer_config.json", {
        **specials, "additional_special_tokens": [], "extra_ids": 0,  # no <extra_id_N> sentinels
        "added_tokens_decoder": {
            str(i): _added_token_entry(t) for i, t in enumerate(["<pad>", "</s>", "<unk>"])
        },
        "clean_up_tokenization_spaces": False, "model_max_length": 512, "tokenizer_class": "T5Tokenizer",
    })


def train_tiny_tokenizers(
    out_dir: str | os.PathLike[str],
    corpus: Sequence[str] | None = None,
    qwen_vocab: int = 512,
    t5_vocab: int = 256,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Train tiny Qwen2 and T5 stand-ins offline; write `out_dir/qwen25_tokenizer` and `out_dir/t5_tokenizer`.

    `corpus` is added to a built-in Danbooru-style corpus drawn with `seed`; the same corpus and seed give
    byte-identical files. The vocabulary sizes are upper bounds (a small corpus may support fewer pieces);
    `qwen_vocab` counts the pad token.
    """
    if qwen_vocab < 258:
        raise InputError(f"qwen_vocab={qwen_vocab} is too small: the 256 byte tokens and the pad token "
                         "need 257 slots, and at least one merge is needed")
    if t5_vocab < 16:
        raise InputError(f"t5_vocab={t5_vocab} is too small: need at least 16 (3 special tokens + pieces)")
    extra = list(corpus or [])
    bad = [i for i, text in enumerate(extra) if not isinstance(text, str)]
    if bad:
        raise TypeError(f"corpus entries must be strings; entry {bad[0]} is {type(extra[bad[0]]).__name__}")
    texts = _builtin_corpus(seed) + extra
    qwen, t5 = _train_qwen(texts, qwen_vocab), _train_t5(texts, t5_vocab)
    qwen_dir, t5_dir = Path(out_dir) / QWEN_DIR_NAME, Path(out_dir) / T5_DIR_NAME
    _save_qwen(qwen, qwen_dir)
    _save_t5(t5, t5_dir)
    return qwen_dir, t5_dir


def _missing(folder: Path, kind: str) -> str | None:
    """Why `folder` cannot hold a `kind` ("qwen" or "t5") tokeniser, or None when the needed files exist."""
    if not folder.is_dir():
        return f"no folder {folder}"
    if (folder / "tokenizer.json").is_file():
        return None
    alternative = ["vocab.json", "merges.txt"] if kind == "qwen" else ["spiece.model"]
    absent = [name for name in alternative if not (folder / name).is_file()]
    if not absent:
        return None
    return (f"{folder} is missing tokenizer.json (or, instead, {' + '.join(alternative)}; "
            f"missing: {', '.join(absent)})")


def qwen_pad_id(tok) -> int:
    """The id ComfyUI substitutes for an empty Qwen prompt: the pad token, `<|endoftext|>` (151643 in the real
    vocabulary)."""
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    pad = tok.convert_tokens_to_ids(QWEN_PAD_TOKEN)
    if pad is None or pad == tok.unk_token_id:
        raise InputError(f"Qwen tokenizer from {tok.name_or_path!r} has no pad token and no {QWEN_PAD_TOKEN}")
    return int(pad)


def _check_t5_ids(tok, folder: Path) -> None:
    """Anima's adapter embeds T5 ids directly, so a tokeniser with other special ids is the wrong one."""
    found = {"<pad>": tok.pad_token_id, "</s>": tok.eos_token_id, "<unk>": tok.unk_token_id}
    wanted = {"<pad>": T5_PAD_ID, "</s>": T5_EOS_ID, "<unk>": T5_UNK_ID}
    if found != wanted:
        raise InputError(f"T5 tokenizer in {folder} has special ids {found}; Anima needs {wanted}")


def load_tokenizers(qwen_dir: str | os.PathLike[str], t5_dir: str | os.PathLike[str]):
    """Load (Qwen2Tokenizer, T5Tokenizer) from local folders only, checking the special-token rules."""
    from transformers import Qwen2Tokenizer, T5TokenizerFast  # heavy import, only when loading

    qwen_path, t5_path = Path(qwen_dir), Path(t5_dir)
    for folder, kind in ((qwen_path, "Qwen"), (t5_path, "T5")):
        reason = _missing(folder, kind.lower())
        if reason is not None:
            raise MissingFileError(f"{kind} tokenizer folder incomplete: {reason}")
    qwen = Qwen2Tokenizer.from_pretrained(str(qwen_path), local_files_only=True)
    t5 = T5TokenizerFast.from_pretrained(str(t5_path), local_files_only=True)
    qwen_pad_id(qwen)  # fails early, naming the folder, when there is no pad token
    _check_t5_ids(t5, t5_path)
    return qwen, t5


def find_tokenizer_dirs(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(qwen_dir, t5_dir) under `root`: a model folder (`qwen25_tokenizer/`, `t5_tokenizer/`), a diffusers
    folder (`tokenizer/`, `t5_tokenizer/`) or a ComfyUI install (`comfy/text_encoders/...`); first match
    wins, and a folder counts when it has the files `load_tokenizers` needs."""
    base = Path(root)
    if not base.is_dir():
        raise MissingFileError(f"tokenizer root {base} is not a folder")
    looked = []
    for layout, qwen_rel, t5_rel in _LAYOUTS:
        qwen_dir, t5_dir = base / qwen_rel, base / t5_rel
        reasons = [r for r in (_missing(qwen_dir, "qwen"), _missing(t5_dir, "t5")) if r is not None]
        if not reasons:
            return qwen_dir, t5_dir
        looked.append(f"  - {layout}: {qwen_dir} + {t5_dir}: {'; '.join(reasons)}")
    raise MissingFileError(f"no Qwen + T5 tokenizer folders under {base}; looked in:\n" + "\n".join(looked))


def _plain_ids(tok, prompts: Sequence[str]) -> list[list[int]]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string "
                        "(it would be split into characters)")
    prompts = list(prompts)
    if not prompts:
        return []
    return [list(ids) for ids in tok(prompts, add_special_tokens=False, padding=False)["input_ids"]]


def _check_max_length(max_length: int | None, minimum: int) -> None:
    if max_length is not None and max_length < minimum:
        raise InputError(f"max_length={max_length} must be at least {minimum} (or None for no truncation)")


def tokenize_qwen(tok, prompts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Qwen ids as ComfyUI feeds the text encoder: no BOS/EOS, no padding; an empty prompt gives `[]`
    (the caller substitutes `[qwen_pad_id(tok)]` with mask 0). `max_length` keeps the first ids."""
    _check_max_length(max_length, 1)
    ids = _plain_ids(tok, prompts)
    return ids if max_length is None else [row[:max_length] for row in ids]


def tokenize_t5(tok, prompts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """T5 ids with `</s>` appended to every prompt (so an empty prompt gives `[1]`), no padding.
    With `max_length`, the prompt is cut so that the result, `</s>` included, has at most that many ids."""
    _check_max_length(max_length, 1)
    eos = tok.eos_token_id
    if eos is None:
        raise InputError(f"T5 tokenizer from {tok.name_or_path!r} has no EOS token")
    ids = _plain_ids(tok, prompts)
    keep = None if max_length is None else max_length - 1
    return [row[:keep] + [int(eos)] for row in ids]
