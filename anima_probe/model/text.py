"""What does the DiT see of a prompt? Anima's text conditioning, done as the reference implementations do it.

Each prompt is tokenised twice (docs/anima.md, "Text path"): Qwen2 tokens (no BOS/EOS, no template) go through the
frozen Qwen3 encoder (last hidden state after the final norm); T5 ids (EOS appended) are the LLM adapter's queries,
which cross-attend to the Qwen states. The adapter output, zero-padded to 512 rows, is `crossattn_emb`: the only way
text enters the DiT. Qwen runs on real token lengths in length-bucketed batches, never on 512 padded tokens; pad rows
are masked in attention and zeroed, so a batched encoding equals the single-prompt one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anima_probe.errors import InputError
from anima_probe.model.anima import CROSSATTN_TOKENS, Anima
from anima_probe.model.tokenization import qwen_pad_id, tokenize_qwen, tokenize_t5

EMPTY_PROMPT_POLICIES = ("comfyui", "diffusers")


@dataclass
class TextConditioning:
    """One row per prompt; every sequence is padded to 512 rows with zeros and masked."""

    prompt_embeds: torch.Tensor  # (B, 512, Dq) Qwen3 last hidden state, pad rows zero
    qwen_mask: torch.Tensor  # (B, 512) bool, True on real Qwen tokens
    t5_ids: torch.Tensor  # (B, 512) long, 0 (= <pad>) past the real ids
    t5_mask: torch.Tensor  # (B, 512) bool
    crossattn_emb: torch.Tensor  # (B, 512, D_text) adapter output, zero past the T5 tokens

    def __len__(self) -> int:
        return self.crossattn_emb.shape[0]

    def select(self, index) -> TextConditioning:
        return TextConditioning(*(t[index] for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.prompt_embeds, self.qwen_mask, self.t5_ids, self.t5_mask, self.crossattn_emb)

    @staticmethod
    def cat(parts: list[TextConditioning]) -> TextConditioning:
        return TextConditioning(*(torch.cat(ts) for ts in zip(*(p.astuple() for p in parts))))


def token_counts(anima: Anima, prompts: list[str]) -> list[int]:
    """Per prompt, the longer of its Qwen and T5 token counts: above `CROSSATTN_TOKENS` it is truncated."""
    qwen = tokenize_qwen(anima.qwen_tokenizer, prompts)
    t5 = tokenize_t5(anima.t5_tokenizer, prompts)
    return [max(len(q), len(t)) for q, t in zip(qwen, t5)]


def _fit(ids: list[int], limit: int, what: str, prompt: str) -> list[int]:
    if len(ids) > limit:
        # The trainers truncate to 512; ComfyUI would not, but the DiT's context is 512 rows either way.
        warnings.warn(f"{what} tokens of prompt {prompt[:40]!r}... truncated from {len(ids)} to {limit}", stacklevel=3)
        return ids[:limit]
    return ids


@dataclass
class PromptTokens:
    """Both tokenisations of a batch, right-padded to the batch's longest prompt (never to 512)."""

    qwen_ids: torch.Tensor  # (B, Lq) long, pad id past the real tokens
    qwen_mask: torch.Tensor  # (B, Lq) bool: what Qwen attends to
    source_mask: torch.Tensor  # (B, Lq) bool: what the adapter may read (differs from qwen_mask for empty prompts)
    t5_ids: torch.Tensor  # (B, Lt) long, 0 past the real ids
    t5_mask: torch.Tensor  # (B, Lt) bool

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.qwen_ids, self.qwen_mask, self.source_mask, self.t5_ids, self.t5_mask)

    def to(self, device) -> PromptTokens:
        return PromptTokens(*(t.to(device) for t in self._fields()))

    def __getitem__(self, index) -> PromptTokens:
        """Rows `index` (a slice or index tensor)."""
        return PromptTokens(*(t[index] for t in self._fields()))


def tokenize_prompts(qwen_tokenizer, t5_tokenizer, prompts: list[str], empty_prompt: str = "comfyui") -> PromptTokens:
    """Tokenise as the references do. empty_prompt: "comfyui" (default; what users run): Qwen gets its pad token,
    unmasked, T5 gets [</s>]. "diffusers": one masked stand-in token with a zeroed embedding (docs/anima.md,
    "Text path")."""
    if empty_prompt not in EMPTY_PROMPT_POLICIES:
        raise InputError(f"empty_prompt must be one of {EMPTY_PROMPT_POLICIES}, got {empty_prompt!r}")
    qwen = [_fit(i, CROSSATTN_TOKENS, "Qwen", p) for i, p in zip(tokenize_qwen(qwen_tokenizer, prompts), prompts)]
    t5 = [_fit(i, CROSSATTN_TOKENS, "T5", p) for i, p in zip(tokenize_t5(t5_tokenizer, prompts), prompts)]
    pad = qwen_pad_id(qwen_tokenizer)
    B, Lq, Lt = len(prompts), max(max(len(q) for q in qwen), 1), max(len(t) for t in t5)
    tok = PromptTokens(torch.full((B, Lq), pad, dtype=torch.long), torch.zeros(B, Lq, dtype=torch.bool),
                       torch.zeros(B, Lq, dtype=torch.bool), torch.zeros(B, Lt, dtype=torch.long),
                       torch.zeros(B, Lt, dtype=torch.bool))
    for i, (qi, ti) in enumerate(zip(qwen, t5)):
        if not qi:  # Qwen needs one token to run; ComfyUI reads its pad token, diffusers masks a stand-in
            qi, readable = ([pad], True) if empty_prompt == "comfyui" else ([0], False)
        else:
            readable = True
        tok.qwen_ids[i, : len(qi)] = torch.tensor(qi)
        tok.qwen_mask[i, : len(qi)] = True
        tok.source_mask[i, : len(qi)] = readable
        tok.t5_ids[i, : len(ti)] = torch.tensor(ti)
        tok.t5_mask[i, : len(ti)] = True
    return tok


def qwen_states(text_encoder, tok: PromptTokens) -> torch.Tensor:
    """Qwen3 last hidden state (after the final norm), rows the adapter may not read zeroed: (B, Lq, Dq)."""
    hidden = text_encoder(input_ids=tok.qwen_ids, attention_mask=tok.qwen_mask.long()).last_hidden_state
    return hidden * tok.source_mask.unsqueeze(-1).to(hidden.dtype)


def crossattn(adapter, hidden: torch.Tensor, tok: PromptTokens) -> torch.Tensor:
    """The adapter's output zero-padded to 512 rows: (B, 512, D_text)."""
    ctx = adapter(source_hidden_states=hidden, target_input_ids=tok.t5_ids, target_attention_mask=tok.t5_mask,
                  source_attention_mask=tok.source_mask)  # zero past the T5 tokens
    return ctx[:, :CROSSATTN_TOKENS]


def _pad_rows(x: torch.Tensor, n: int = CROSSATTN_TOKENS) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1])) if x.ndim == 3 else \
        torch.nn.functional.pad(x, (0, n - x.shape[1]))


@torch.no_grad()
def _encode_batch(anima: Anima, prompts: list[str], empty_prompt: str) -> TextConditioning:
    tok = tokenize_prompts(anima.qwen_tokenizer, anima.t5_tokenizer, prompts, empty_prompt).to(anima.device)
    hidden = qwen_states(anima.text_encoder, tok)  # (B, Lq, Dq)
    ctx = crossattn(anima.adapter, hidden, tok)  # (B, 512, D_text)
    return TextConditioning(_pad_rows(hidden), _pad_rows(tok.source_mask), _pad_rows(tok.t5_ids),
                            _pad_rows(tok.t5_mask), ctx.to(anima.dtype))


def encode_prompts(anima: Anima, prompts: list[str], batch_size: int = 16, empty_prompt: str = "comfyui",
                   progress: bool | None = None) -> TextConditioning:
    """Encode prompts into Anima's conditioning, in the input order, in length-bucketed batches."""
    if anima.text_encoder is None:
        raise RuntimeError("this Anima was loaded with with_text=False; reload with the text encoder")
    prompts = list(prompts)
    lengths = [len(ids) for ids in tokenize_qwen(anima.qwen_tokenizer, prompts)]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # length buckets: little padding per batch
    starts = range(0, len(order), batch_size)
    hide = progress is False or (progress is None and len(starts) < 4)
    parts = [_encode_batch(anima, [prompts[i] for i in order[s : s + batch_size]], empty_prompt)
             for s in tqdm(starts, desc="encode text", disable=hide)]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return TextConditioning.cat(parts).select(inverse.to(anima.device))
