"""Batched sampling with a KV cache: greedy, temperature, top-k, top-p, stop strings, seeds.

Prompts of different lengths are padded on the left; a boolean attention mask keeps
every row from seeing padding, and position ids count only real tokens, so a row's
output does not depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.data.chat import ChatFormat, stop_token_ids
from models.data.chat_records import task_prompt
from models.data.tokenizer import Tokenizer
from models.families.build import Model
from models.layers.kv_cache import KVCache


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None


def _filter(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def pick(logits: Tensor, s: Sampling, gen: torch.Generator | None) -> Tensor:
    """The next token of each row of `logits` (rows, vocab) under one sampling setting."""
    if s.temperature <= 0:
        return logits.argmax(-1)
    probs = _filter(logits.float() / s.temperature, s.top_k, s.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate_ids(
    model: Model,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    eos_id: int | Collection[int] | None = None,
    use_cache: bool = True,
    stop: list[str] | None = None,
    tokenizer: Tokenizer | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (without the prompt; the end token not included).
    `eos_id`: the id, or every id, that ends a row."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    model.eval()
    device = model.head_weight().device
    B, L = len(prompts), max(len(p) for p in prompts)
    budget = min(sampling.max_new_tokens, model.config.block_size - L)
    if budget < 0:
        raise ValueError(f"prompt of {L} tokens is longer than the context ({model.config.block_size})")
    idx = torch.zeros((B, L), dtype=torch.long, device=device)
    valid = torch.zeros((B, L), dtype=torch.bool, device=device)
    for r, p in enumerate(prompts):
        idx[r, L - len(p) :] = torch.tensor(p, device=device)
        valid[r, L - len(p) :] = True
    padded = not bool(valid.all())
    gen = None
    if sampling.seed is not None:
        gen = torch.Generator(device=device).manual_seed(sampling.seed)
    cache = KVCache(model.config, B, device, model.head_weight().dtype, L + budget) if use_cache else None

    ends = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    seq, keys = idx, valid
    new_tokens: Tensor | None = None
    for _ in range(budget):
        if cache is None or new_tokens is None:  # full forward (no cache, or the cache's prefill)
            inp, keys_now = seq, keys
            positions = (keys_now.long().cumsum(-1) - 1).clamp(min=0)
            q_len = inp.size(1)
        else:
            inp, keys_now = new_tokens[:, None], keys
            positions = keys_now.long().sum(-1, keepdim=True) - 1
            q_len = 1
        mask = None
        if padded:
            causal = torch.ones(q_len, keys_now.size(1), dtype=torch.bool, device=device).tril(keys_now.size(1) - q_len)
            mask = (causal[None] & keys_now[:, None, :])[:, None]
        h = model.hidden(inp, positions=positions, cache=cache, mask=mask)
        new_tokens = pick(model.logits(h[:, -1]).float(), sampling, gen)
        seq = torch.cat([seq, new_tokens[:, None]], 1)
        keys = torch.cat([keys, torch.ones((B, 1), dtype=torch.bool, device=device)], 1)
        for r, t in enumerate(new_tokens.tolist()):
            if done[r]:
                continue
            if t in ends:
                done[r] = True
                continue
            out[r].append(t)
            if stop and tokenizer is not None and any(s in tokenizer.decode(out[r]) for s in stop):
                done[r] = True
        if all(done):
            break
    return out


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


def finished_text(raw: str, stop: list[str] | None, supervised: bool) -> str:
    """A generation's final text: cut at the first stop string and, after the completion
    marker (`supervised`), without the leading space completions are trained with."""
    text = cut_at_stop(raw, stop)
    return text[1:] if supervised and text.startswith(" ") else text


def complete(
    model: Model,
    tok: Tokenizer,
    prompts: list[str],
    sampling: Sampling,
    stop: list[str] | None = None,
    supervised: bool = False,
    truncate: bool = False,
    end_ids: Collection[int] | None = None,
) -> list[str]:
    """Generate text for each prompt. `supervised` appends the completion marker, as training did;
    `truncate` drops the beginning of prompts that leave no room for max_new_tokens; `end_ids`:
    the ids that end a generation (default: the tokenizer's `end_ids`)."""
    encoded = [tok.encode(p) + ([tok.sep_id] if supervised else []) for p in prompts]
    encoded = [ids or [tok.eos_id] for ids in encoded]
    if truncate:
        room = max(1, model.config.block_size - sampling.max_new_tokens)
        encoded = [ids[-room:] for ids in encoded]
    ends = tok.end_ids if end_ids is None else end_ids
    ids = generate_ids(model, encoded, sampling, eos_id=ends, stop=stop, tokenizer=tok)
    return [finished_text(tok.decode(x), stop, supervised) for x in ids]


def complete_tasks(
    model: Model,
    tok: Tokenizer,
    prompts: list[str],
    sampling: Sampling,
    chat: ChatFormat | None = None,
    stop: list[str] | None = None,
    truncate: bool = False,
) -> list[str]:
    """Answers to task prompts (models.data.records), as training taught them and the task endpoints
    give them: on a chat model each prompt is the user turn of a conversation its template renders
    (models.data.chat_records.task_prompt), and generation stops on every end-of-sequence and
    end-of-turn id (models.data.chat.stop_token_ids); otherwise the prompt ends with the completion
    marker. Surrounding space removed."""
    if chat is None:
        out = complete(model, tok, prompts, sampling, stop, supervised=True, truncate=truncate)
    else:
        rendered = [task_prompt(p, chat) for p in prompts]
        ends = stop_token_ids(chat, tok.hf, tok.end_ids)
        out = complete(model, tok, rendered, sampling, stop, truncate=truncate, end_ids=ends)
    return [o.strip() for o in out]
