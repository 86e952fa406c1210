"""Can a text experiment be rerun without re-encoding every caption?

Pooled text vectors are cached on disk, one small safetensors file per prompt, under a folder keyed by the
sha256 of every file that shapes them (DiT file: it holds the LLM adapter; Qwen3 file; both tokenizer folders),
the dtype, the empty-prompt policy, the pooling strategies and the code that encodes and pools. Changing any of
them changes the key, so a stale vector is never read. Each entry is written atomically, so an interrupted run
keeps what it finished and a rerun encodes only the rest; an unreadable entry is recomputed.

File hashes of multi-GB checkpoints are memoised by (path, size, mtime) in ``hashes.json`` next to the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from anima_probe.errors import InputError
from anima_probe.model.files import ModelFileError, load_tensors, save_tensors
from anima_probe.pipeline.atomic import atomic_write_json, atomic_write_text
from anima_probe.pipeline.provenance import sha256_file
from anima_probe.probes.pooling import STRATEGIES, pool_all

CACHE_VERSION = "1"  # bump when what an entry holds changes
SOURCES = ("prompt_embeds", "crossattn_emb")
TEXT_ROLES = ("dit", "text_encoder", "qwen_tokenizer", "t5_tokenizer")


def default_cache_dir() -> Path:
    """$ANIMA_PROBE_CACHE, else $XDG_CACHE_HOME/anima-probe, else ~/.cache/anima-probe."""
    if env := os.environ.get("ANIMA_PROBE_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anima-probe"


def _memo_path() -> Path:
    return default_cache_dir() / "hashes.json"


def _file_hash(path: Path, memo: dict[str, str]) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_file(path)
    return memo[key]


def fingerprint(path: str | Path) -> str:
    """sha256 of a file, or of a folder (its relative file names and their hashes, sorted)."""
    path = Path(path)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    except (OSError, ValueError):
        memo = {}  # a damaged memo only costs a rehash
    before = len(memo)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(path).as_posix()}\0{_file_hash(f, memo)}\n".encode())
        out = digest.hexdigest()
    else:
        out = _file_hash(path, memo)
    if len(memo) != before:
        atomic_write_json(memo_file, memo)
    return out


def _code_hash() -> str:
    """sha256 of the code that makes an entry (encoding, pooling, this file): a fix there must not read old vectors."""
    from anima_probe.model import text
    from anima_probe.probes import pooling

    digest = hashlib.sha256()
    for module in (pooling, text, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Pooled `prompt_embeds` / `crossattn_emb` vectors of one model, on disk."""

    def __init__(self, root: str | Path, anima, empty_prompt: str = "comfyui", batch_size: int = 16):
        missing = [r for r in TEXT_ROLES if r not in anima.files]
        if missing:
            raise InputError(f"the model has no file for {missing}; the cache key needs every text-side file")
        self.anima, self.empty_prompt, self.batch_size = anima, empty_prompt, batch_size
        material = {"version": CACHE_VERSION, "dtype": str(anima.dtype), "empty_prompt": empty_prompt,
                    "strategies": sorted(STRATEGIES), "files": {r: fingerprint(anima.files[r]) for r in TEXT_ROLES},
                    "code": _code_hash()}
        key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / "pooled" / key[:20]
        if not (self.dir / "key.json").exists():
            atomic_write_text(self.dir / "key.json", json.dumps(material, indent=2) + "\n")

    def _path(self, prompt: str) -> Path:
        h = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return self.dir / h[:2] / f"{h}.safetensors"

    def _read(self, prompt: str) -> dict[str, torch.Tensor] | None:
        path = self._path(prompt)
        if not path.exists():
            return None
        try:
            return load_tensors(path)
        except (ModelFileError, OSError) as err:
            warnings.warn(f"{path}: unreadable cache entry ({err}); recomputing", stacklevel=3)
            return None

    def _encode(self, prompts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        from anima_probe.model.text import encode_prompts

        tc = encode_prompts(self.anima, prompts, batch_size=self.batch_size, empty_prompt=self.empty_prompt,
                            progress=False)
        pooled = {src: pool_all(x.float(), m) for src, x, m in
                  (("prompt_embeds", tc.prompt_embeds, tc.qwen_mask), ("crossattn_emb", tc.crossattn_emb, tc.t5_mask))}
        entries = {}
        for i, prompt in enumerate(prompts):
            entry = {f"{src}/{name}": v[i].cpu().contiguous() for src, d in pooled.items() for name, v in d.items()}
            save_tensors(entry, self._path(prompt))
            entries[prompt] = entry
        return entries

    def pooled(self, prompts: list[str], progress: bool = True) -> dict[str, torch.Tensor]:
        """``"{source}/{strategy}" -> (N, D)`` float32 for `prompts` in order (duplicates allowed)."""
        prompts = list(prompts)
        found = {p: self._read(p) for p in dict.fromkeys(prompts)}  # each distinct prompt read once
        todo = sorted(p for p, entry in found.items() if entry is None)
        chunk = 4 * self.batch_size  # an interrupt loses at most one chunk of work
        for s in tqdm(range(0, len(todo), chunk), desc="encode + pool text", unit="chunk",
                      disable=not progress or not todo):
            found.update(self._encode(todo[s : s + chunk]))
        entries = [found[p] for p in prompts]
        return {key: torch.stack([e[key] for e in entries]) for key in entries[0]} if entries else {}
