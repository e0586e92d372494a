"""models.inference.generate: KV-cache and full-recompute greedy decoding agree; rows are batch-independent."""

from __future__ import annotations

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.inference.generate import Sampling, complete, cut_at_stop, generate_ids
from models.layers.kv_cache import KVCache

PROMPTS = ["At the market, Nadia has", "J", "Omar has 7 books, seven in", "So it goes. At the"]


def encoded(tok: Tokenizer) -> list[list[int]]:
    ids = [tok.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids), "prompts should have different lengths"
    return ids


def test_hidden_with_cache_matches_full_forward(peaked: GPT) -> None:
    idx = torch.randint(0, peaked.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    full = peaked.hidden(idx)
    cache = KVCache(peaked.config, 2, torch.device("cpu"), torch.float32)
    parts = [peaked.hidden(idx[:, :12], cache=cache)]
    for t in range(12, 20):
        parts.append(peaked.hidden(idx[:, t : t + 1], cache=cache))
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_cache_and_no_cache_agree_on_a_padded_batch(peaked: GPT, tokenizer: Tokenizer) -> None:
    prompts = encoded(tokenizer)
    s = Sampling(max_new_tokens=16)
    cached = generate_ids(peaked, prompts, s, use_cache=True)
    full = generate_ids(peaked, prompts, s, use_cache=False)
    assert cached == full
    assert all(len(out) == 16 for out in cached)
    assert len({tuple(o) for o in cached}) == len(prompts)  # the prompts matter
    assert any(len(set(o)) > 3 for o in cached)  # not a degenerate repeat of one token


def test_cache_and_no_cache_agree_without_padding(peaked: GPT, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("At the market, Nadia has")
    prompts = [ids, ids, ids[::-1]]
    assert len({len(p) for p in prompts}) == 1
    s = Sampling(max_new_tokens=12)
    assert generate_ids(peaked, prompts, s, use_cache=True) == generate_ids(peaked, prompts, s, use_cache=False)


@pytest.mark.parametrize("use_cache", [True, False])
def test_row_output_does_not_depend_on_the_batch(peaked: GPT, tokenizer: Tokenizer, use_cache: bool) -> None:
    prompts = encoded(tokenizer)
    s = Sampling(max_new_tokens=12)
    batched = generate_ids(peaked, prompts, s, use_cache=use_cache)
    alone = [generate_ids(peaked, [p], s, use_cache=use_cache)[0] for p in prompts]
    assert batched == alone
    reordered = generate_ids(peaked, prompts[::-1], s, use_cache=use_cache)
    assert reordered == batched[::-1]
    pair = generate_ids(peaked, [prompts[1], prompts[2]], s, use_cache=use_cache)
    assert pair == [batched[1], batched[2]]


def test_matches_step_by_step_argmax(peaked: GPT, tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode(PROMPTS[0])
    [out] = generate_ids(peaked, [prompt], Sampling(max_new_tokens=8), use_cache=True)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(peaked(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt) :]


def test_eos_ends_a_row_and_is_not_returned(peaked: GPT, tokenizer: Tokenizer) -> None:
    prompts = encoded(tokenizer)
    s = Sampling(max_new_tokens=10)
    free = generate_ids(peaked, prompts, s)
    eos = free[0][3]  # pretend the 4th token of row 0 ends the text
    out = generate_ids(peaked, prompts, s, eos_id=eos)
    assert out[0] == free[0][:3]
    for got, want in zip(out, free, strict=True):
        assert got == (want[: want.index(eos)] if eos in want else want)


def test_budget_is_limited_by_the_context(peaked: GPT, tokenizer: Tokenizer) -> None:
    prompt = list(range(40))
    [out] = generate_ids(peaked, [prompt], Sampling(max_new_tokens=100))
    assert len(out) == peaked.config.block_size - 40
    with pytest.raises(ValueError, match="longer than the context"):
        generate_ids(peaked, [list(range(50))], Sampling(max_new_tokens=1))
    with pytest.raises(ValueError):
        generate_ids(peaked, [[1, 2], []], Sampling())


def test_seeded_sampling_is_reproducible(peaked: GPT, tokenizer: Tokenizer) -> None:
    prompts = encoded(tokenizer)
    s = Sampling(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    a = generate_ids(peaked, prompts, s)
    assert a == generate_ids(peaked, prompts, s)
    assert a != generate_ids(peaked, prompts, Sampling(max_new_tokens=10, temperature=1.0, top_k=20, seed=4))
    # top_k=1 is greedy whatever the temperature
    greedy = generate_ids(peaked, prompts, Sampling(max_new_tokens=10))
    assert generate_ids(peaked, prompts, Sampling(max_new_tokens=10, temperature=2.0, top_k=1, seed=0)) == greedy


def test_complete_and_stop_strings(peaked: GPT, tokenizer: Tokenizer) -> None:
    s = Sampling(max_new_tokens=10)
    [text] = complete(peaked, tokenizer, [PROMPTS[0]], s)
    [ids] = generate_ids(peaked, [tokenizer.encode(PROMPTS[0])], s, eos_id=tokenizer.eos_id)
    assert text == tokenizer.decode(ids)
    assert cut_at_stop("one two. three", ["."]) == "one two"
    assert cut_at_stop("abc", None) == "abc"
    if len(text) > 2:
        stop = text[1:3]
        [cut] = complete(peaked, tokenizer, [PROMPTS[0]], s, stop=[stop])
        assert cut == text[: text.find(stop)]
