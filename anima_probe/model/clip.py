"""What pooled CLIP-L vector does a prompt give? The text side of the paper's own modulation source (family b).

The official Cosmos adapter and Anzhc's node read the 768-d ``pooler_output`` of a CLIP-L *text* model (the final
layer-normed hidden state at the first end-of-text token; 77 tokens, truncated, padded with end-of-text as ComfyUI
does). Users keep it in two layouts, both read here from local files only:

- a single safetensors file as ComfyUI keeps ``clip_l.safetensors``: HF key names (``text_model.encoder.layers.N...``,
  possibly under a prefix such as ``cond_stage_model.transformer.``) plus a tokenizer folder (``vocab.json`` +
  ``merges.txt``, as ComfyUI's ``sd1_tokenizer``), found next to the file or passed explicitly;
- a transformers folder (``config.json`` + weights + tokenizer files).

The single file has no config, so the dimensions are inferred from tensor shapes, with CLIP's fixed head width of
64 giving the head count (CLIP-L 768/64 = 12). ``write_tiny_clip`` writes a small random CLIP text model and a BPE
tokenizer trained offline with CLIP's own pipeline, in the single-file format, for tests and the toy world.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import trainers as tk_trainers
from transformers import CLIPTextConfig, CLIPTextModel

from anima_probe.errors import InputError, MissingFileError
from anima_probe.model.files import (
    ModelFileError,
    check_layout,
    count_indexed,
    load_tensors,
    required_shape,
    save_tensors,
    tensor_shapes,
)

MAX_LENGTH = 77  # CLIP's context: <|startoftext|> + 75 tokens + <|endoftext|>
HEAD_DIM = 64  # every OpenAI / OpenCLIP text tower uses 64-wide heads
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DETECT_KEY = "text_model.embeddings.token_embedding.weight"
# Present in some published files but not part of the text tower's pooler_output path.
IGNORED_KEYS = ("text_projection.weight", "logit_scale", "text_model.embeddings.position_ids")
TOKENIZER_DIRS = ("tokenizer", "clip_tokenizer", "sd1_tokenizer")
TINY_FILE = "clip_l.safetensors"
# CLIP's word split (the one transformers' CLIPTokenizer rebuilds its pipeline with).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass
class ClipText:
    """A frozen CLIP text tower and its tokenizer."""

    model: CLIPTextModel
    tokenizer: object
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77) ids: BOS, the first 75 tokens, EOS, then EOS padding (ComfyUI pads clip_l with end-of-text)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt")
        return enc["input_ids"]  # (B, 77)

    @torch.no_grad()
    def pooled(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """``pooler_output`` (B, hidden) in float32: the hidden state at the first EOS after the final norm."""
        ids = self.token_ids(prompts).to(self.device)  # (B, 77)
        parts = [self.model(input_ids=ids[i : i + batch_size]).pooler_output for i in range(0, len(ids), batch_size)]
        return torch.cat(parts).float() if parts else torch.zeros(0, self.dim)  # (B, hidden)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def clip_config(shapes: dict[str, tuple[int, ...]], path, eos_id: int, bos_id: int, pad_id: int) -> CLIPTextConfig:
    """Dimensions from tensor shapes (bare ``text_model.*`` names); the head count from CLIP's 64-wide heads."""
    vocab, hidden = required_shape(shapes, "embeddings.token_embedding.weight", path)
    positions = required_shape(shapes, "embeddings.position_embedding.weight", path)[0]
    if hidden % HEAD_DIM:
        raise ModelFileError(f"{path}: hidden size {hidden} is not a multiple of CLIP's head width {HEAD_DIM}")
    if positions < MAX_LENGTH:
        raise ModelFileError(f"{path}: key 'text_model.embeddings.position_embedding.weight' has {positions} "
                              f"positions; CLIP text needs {MAX_LENGTH}")
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, num_attention_heads=hidden // HEAD_DIM,
        intermediate_size=required_shape(shapes, "encoder.layers.0.mlp.fc1.weight", path)[0],
        num_hidden_layers=count_indexed(shapes, r"encoder\.layers\.(\d+)\."),
        max_position_embeddings=positions, hidden_act="quick_gelu",
        # the real eos id (not the legacy 2) makes the pooler read the first EOS, as ComfyUI's argmax does
        eos_token_id=eos_id, bos_token_id=bos_id, pad_token_id=pad_id,
    )


def _text_prefix(keys, path) -> str:
    hits = [k[: -len(DETECT_KEY)] for k in keys if k.endswith(DETECT_KEY)]
    if len(hits) != 1:
        shown = ", ".join(sorted(keys)[:5])
        raise ModelFileError(f"{path}: not a CLIP text model file: expected one key ending in '{DETECT_KEY}', "
                              f"found {len(hits)} (first keys: {shown})")
    return hits[0]


def load_clip_file(path, tokenizer, device="cpu", dtype=torch.float32) -> CLIPTextModel:
    """A CLIP text tower from one safetensors file with HF key names (under any prefix), strictly checked."""
    path = Path(path)
    shapes = tensor_shapes(path)
    prefix = _text_prefix(shapes, path)
    inner = prefix + "text_model."
    ignored = {prefix + k for k in IGNORED_KEYS}
    stray = sorted(k for k in shapes if not k.startswith(inner) and k not in ignored)
    if stray:
        raise ModelFileError(f"{path}: {len(stray)} keys outside '{inner}' that a CLIP text model does not "
                              f"have: {stray[:5]}")
    bare = {k[len(inner):]: s for k, s in shapes.items() if k.startswith(inner) and k not in ignored}
    config = clip_config(bare, path, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id)
    if len(tokenizer) > config.vocab_size:
        raise ModelFileError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the embedding only "
                              f"{config.vocab_size} rows; wrong tokenizer for this file?")
    with init_empty_weights(include_buffers=False):
        model = CLIPTextModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_layout(bare, expected, path, "CLIP text single file", inner)
    state = load_tensors(path, {inner + k: k for k in expected}, dtype, device, weights=True)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_clip_tokenizer(folder):
    """CLIP's BPE tokenizer from ``vocab.json`` + ``merges.txt`` (ComfyUI's ``sd1_tokenizer`` layout) or a
    ``tokenizer.json`` (what transformers saves), local files only."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
    if missing and not (folder / "tokenizer.json").is_file():
        raise MissingFileError(f"CLIP tokenizer folder {folder} is missing {', '.join(missing)} "
                                "(or, instead, tokenizer.json)")
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    for name, want in (("bos", BOS), ("eos", EOS)):
        token = getattr(tok, f"{name}_token")
        if token != want or getattr(tok, f"{name}_token_id") is None:
            raise InputError(f"CLIP tokenizer in {folder}: {name} token is {token!r}, expected {want!r}")
    return tok


def _find_tokenizer(path: Path) -> Path:
    for base in (path.parent, path.parent.parent):
        for name in TOKENIZER_DIRS:
            if (base / name / "vocab.json").is_file() or (base / name / "tokenizer.json").is_file():
                return base / name
    raise MissingFileError(f"{path}: no CLIP tokenizer folder next to it (looked for {', '.join(TOKENIZER_DIRS)} "
                            f"in {path.parent} and {path.parent.parent}); pass tokenizer=FOLDER")


def load_clip(path, tokenizer=None, device="cpu", dtype=torch.float32) -> ClipText:
    """Load a frozen CLIP text model: a single ``.safetensors`` file, a folder holding exactly one such file (plus
    a tokenizer folder), or a transformers folder with ``config.json``. ``tokenizer`` overrides the folder found."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        tok = load_clip_tokenizer(tokenizer or path)
        model = CLIPTextModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True).to(device)
        return ClipText(model.eval().requires_grad_(False), tok, {"clip": path, "clip_tokenizer": Path(tokenizer or path)})
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise MissingFileError(f"{path}: expected one CLIP .safetensors file (or a config.json), found "
                                    f"{len(files)}: {[f.name for f in files]}")
        path = files[0]
    if not path.is_file():
        raise MissingFileError(f"{path}: no such CLIP file or folder")
    tok_dir = Path(tokenizer) if tokenizer is not None else _find_tokenizer(path)
    tok = load_clip_tokenizer(tok_dir)
    return ClipText(load_clip_file(path, tok, device, dtype), tok, {"clip": path, "clip_tokenizer": tok_dir})


# ----------------------------------------------------------------------------------------------------------------
# Tiny stand-in


def _clip_pipeline(tok: Tokenizer) -> Tokenizer:
    """CLIP's normaliser and pre-tokeniser: NFC, whitespace runs -> one space, lower case, word split, bytes."""
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tiny_clip_tokenizer(out_dir, corpus: list[str], vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE with CLIP's ``</w>`` word ends and lay its vocabulary out as the real one is: the 256
    byte symbols, the same with ``</w>``, one token per merge in merge order, then BOS and EOS (EOS the highest id).
    Every byte is encodable, so no prompt ever maps to the unknown token (which CLIP spells as EOS)."""
    tok = _clip_pipeline(Tokenizer(models.BPE(end_of_word_suffix="</w>")))
    trainer = tk_trainers.BpeTrainer(vocab_size=vocab_size, end_of_word_suffix="</w>", show_progress=False,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pieces = alphabet + [c + "</w>" for c in alphabet]
    pieces += list(dict.fromkeys(a + b for a, b in merges if a + b not in set(pieces)))
    vocab = {p: i for i, p in enumerate(pieces + [BOS, EOS])}
    final = _clip_pipeline(Tokenizer(models.BPE(vocab, merges, end_of_word_suffix="</w>", unk_token=EOS)))
    final.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                              AddedToken(EOS, special=True, normalized=False)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final.model.save(str(out))  # vocab.json + merges.txt, what ComfyUI's sd1_tokenizer holds
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "model_max_length": MAX_LENGTH, "tokenizer_class": "CLIPTokenizer",
         "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    return out


def write_tiny_clip(out_dir, seed: int = 0, corpus: list[str] | None = None, hidden: int = 128, layers: int = 2,
                    vocab_size: int = 1024) -> Path:
    """Write ``out_dir/clip_l.safetensors`` (HF ``text_model.*`` names, as ComfyUI keeps clip_l) and
    ``out_dir/tokenizer/``; a random seeded text tower (frozen, like the toy world's Qwen3). Returns the file."""
    from anima_probe.model.tokenization import _builtin_corpus

    out = Path(out_dir)
    tok_dir = train_tiny_clip_tokenizer(out / "tokenizer", _builtin_corpus(seed) + list(corpus or []), vocab_size)
    tok = load_clip_tokenizer(tok_dir)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, num_attention_heads=hidden // HEAD_DIM,
                            intermediate_size=2 * hidden, num_hidden_layers=layers,
                            max_position_embeddings=MAX_LENGTH, eos_token_id=tok.eos_token_id,
                            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)  # transformers' initialiser reads the global generator
    model = CLIPTextModel(config)
    tensors = {"text_model." + k: v.contiguous() for k, v in sorted(model.state_dict().items())}
    return save_tensors(tensors, out / TINY_FILE, {"format": "anima-probe-tiny-clip", "seed": seed})
