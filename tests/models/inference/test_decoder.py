"""models.inference.decoder: continuous batching gives each row what generate_ids/complete give it alone."""

from __future__ import annotations

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, complete, generate_ids
from tests.conftest import tiny_model

PROMPTS = ["At the market, Nadia has", "J", "Omar has 7 books, seven in", "So it goes. At the", "Hana"]


def run(dec: Decoder, rows: list[Row], join_every: int = 0) -> list[Row]:
    """Add rows (all at once, or one every `join_every` steps) and step until all finish."""
    pending, finished, steps = list(rows), set(), 0
    while pending or dec.busy:
        if pending and (join_every == 0 or steps % join_every == 0):
            for r in pending if join_every == 0 else pending[:1]:
                dec.add(r)
            pending = [] if join_every == 0 else pending[1:]
        finished |= {id(r) for r in dec.step() if r.finish_reason}
        steps += 1
        assert steps < 500
    assert finished >= {id(r) for r in rows}
    return rows


@pytest.mark.parametrize("join_every", [0, 1, 3])
def test_greedy_rows_match_generate_ids_alone(peaked: GPT, tokenizer: Tokenizer, join_every: int) -> None:
    ids = [tokenizer.encode(p) for p in PROMPTS]
    budgets = [12, 5, 20, 1, 40]
    rows = [Row(p, Sampling(max_new_tokens=b)) for p, b in zip(ids, budgets)]
    run(Decoder(peaked, tokenizer, max_batch=3), rows, join_every)
    for row, p, b in zip(rows, ids, budgets):
        [want] = generate_ids(peaked, [p], Sampling(max_new_tokens=b), eos_id=tokenizer.eos_id)
        assert row.tokens == want
        assert row.finish_reason == ("length" if len(want) == min(b, 48 - len(p)) else "stop")
        assert row.text == tokenizer.decode(want)


def test_prompts_of_one_length_are_prefilled_together(peaked: GPT, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(PROMPTS[0])
    prompts = [ids, ids[::-1], [*ids[1:], ids[0]], ids]
    rows = run(Decoder(peaked, tokenizer), [Row(p, Sampling(max_new_tokens=10)) for p in prompts])
    for row, p in zip(rows, prompts):
        assert row.tokens == generate_ids(peaked, [p], Sampling(max_new_tokens=10), eos_id=tokenizer.eos_id)[0]
    assert rows[0].tokens == rows[3].tokens


def test_rows_that_outlast_the_shared_column_are_compacted(peaked: GPT, tokenizer: Tokenizer) -> None:
    """A row joining late shares the write column with an old one, so the column reaches the
    end of the context first; gaps are then squeezed out and decoding goes on unchanged."""
    prompts = [tokenizer.encode("J"), tokenizer.encode(PROMPTS[2]), tokenizer.encode(PROMPTS[0])]
    rows = [Row(p, Sampling(max_new_tokens=46)) for p in prompts]
    dec = Decoder(peaked, tokenizer, max_batch=2)
    dec.add(rows[0])
    for _ in range(20):
        dec.step()
    dec.add(rows[1])
    dec.add(rows[2])  # waits for a free slot
    run(dec, [])
    assert dec.cache is not None and dec.cache.compactions >= 1
    for row in rows:
        [want] = generate_ids(peaked, [row.prompt], Sampling(max_new_tokens=46), eos_id=tokenizer.eos_id)
        assert row.tokens == want


def test_supervised_text_and_stop_strings_match_complete(peaked: GPT, tokenizer: Tokenizer) -> None:
    s = Sampling(max_new_tokens=16)
    free = complete(peaked, tokenizer, PROMPTS, s, supervised=True)
    stops = [[t[2:4]] if len(t) > 4 else ["zzz"] for t in free]
    want = [complete(peaked, tokenizer, [p], s, stop=st, supervised=True)[0] for p, st in zip(PROMPTS, stops)]
    rows = [
        Row([*tokenizer.encode(p), tokenizer.sep_id], s, stop=st, supervised=True, stream=True)
        for p, st in zip(PROMPTS, stops)
    ]
    dec = Decoder(peaked, tokenizer, max_batch=8)
    streamed = {id(r): "" for r in rows}
    for r in rows:
        dec.add(r)
    while dec.busy:
        for r in dec.step():
            streamed[id(r)] += r.delta()
    assert [r.text for r in rows] == want
    assert [streamed[id(r)] for r in rows] == want  # the deltas add up to the final text
    assert any(r.finish_reason == "stop" and len(r.tokens) < 16 for r in rows)


def test_seeded_sampling_does_not_depend_on_the_batch(peaked: GPT, tokenizer: Tokenizer) -> None:
    def settings(seed: int) -> Sampling:
        return Sampling(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=seed)

    def sample(prompts: list[str], seed: int) -> list[list[int]]:
        rows = [Row(tokenizer.encode(p), settings(seed)) for p in prompts]
        return [r.tokens for r in run(Decoder(peaked, tokenizer), rows)]

    together = sample(PROMPTS, 3)
    assert [sample([p], 3)[0] for p in PROMPTS] == together
    assert sample(PROMPTS, 4) != together
    greedy = Row(tokenizer.encode(PROMPTS[0]), Sampling(max_new_tokens=10))
    sampled = Row(tokenizer.encode(PROMPTS[1]), settings(3))
    run(Decoder(peaked, tokenizer), [greedy, sampled])
    assert greedy.tokens == generate_ids(peaked, [greedy.prompt], Sampling(max_new_tokens=10))[0]
    assert sampled.tokens == sample([PROMPTS[1]], 3)[0]


def test_cancelled_rows_leave_and_bad_prompts_are_refused(peaked: GPT, tokenizer: Tokenizer) -> None:
    dec = Decoder(peaked, tokenizer)
    a, b = (Row(tokenizer.encode(p), Sampling(max_new_tokens=30)) for p in PROMPTS[:2])
    dec.add(a)
    dec.add(b)
    dec.step()
    a.cancelled = True
    assert a in dec.step() and a.finish_reason == "cancelled"
    run(dec, [])
    assert b.finish_reason is not None and len(b.tokens) > 2
    with pytest.raises(ValueError, match="prompt needs"):
        dec.add(Row(list(range(48)), Sampling()))
    with pytest.raises(ValueError, match="prompt needs"):
        dec.add(Row([], Sampling()))


def test_one_step_prefills_a_bounded_number_of_prompt_tokens(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long prompts arriving together join over several steps, and a row already decoding
    gets a token at each of them; the results are those of each prompt alone."""
    import models.inference.decoder

    monkeypatch.setattr(models.inference.decoder, "PREFILL_TOKENS_PER_STEP", 100)
    model = tiny_model(tokenizer.vocab_size, block_size=128)
    dec = Decoder(model, tokenizer, max_batch=8)
    short = Row([5, 6, 7], Sampling(max_new_tokens=20), ignore_eos=True)
    dec.add(short)
    dec.step()
    longs = [Row([(i * 7 + j) % 200 + 3 for j in range(60)], Sampling(max_new_tokens=3)) for i in range(4)]
    for r in longs:
        dec.add(r)
    admitted = []
    for _ in range(4):
        before = len(short.tokens)
        dec.step()
        admitted.append(sum(1 for r in longs if r.tokens or r.finish_reason))
        assert len(short.tokens) == before + 1
    assert admitted[:2] == [1, 2], admitted  # 60 tokens a step with a budget of 100
    while dec.busy:
        dec.step()
    for r in longs:
        alone = generate_ids(model, [r.prompt], Sampling(max_new_tokens=3), eos_id=tokenizer.eos_id)[0]
        assert r.tokens == alone[: len(r.tokens)] and len(r.tokens) >= 1


def test_a_bf16_kv_cache_holds_half_the_bytes_and_rows_still_decode_as_alone(peaked: GPT, tokenizer: Tokenizer) -> None:
    ids = [tokenizer.encode(p) for p in PROMPTS]
    half, full = Decoder(peaked, tokenizer, max_batch=3, kv_cache="bf16"), Decoder(peaked, tokenizer, max_batch=3)
    c = peaked.config
    assert full.kv_bytes == 2 * c.n_layer * 3 * c.block_size * c.n_embd * 4 == 2 * half.kv_bytes
    rows = run(half, [Row(p, Sampling(max_new_tokens=10)) for p in ids], join_every=1)
    assert half.cache is not None and {t.dtype for t in half.cache.k + half.cache.v} == {torch.bfloat16}
    for row, p in zip(rows, ids):  # each row as it decodes alone, and as the fp32 cache decodes it
        [alone] = run(Decoder(peaked, tokenizer, max_batch=1, kv_cache="bf16"), [Row(p, Sampling(max_new_tokens=10))])
        [fp32] = run(full, [Row(p, Sampling(max_new_tokens=10))])
        assert row.tokens == alone.tokens == fp32.tokens
    with pytest.raises(ValueError, match="kv_cache must be one of fp32, bf16"):
        Decoder(peaked, tokenizer, kv_cache="fp16")
