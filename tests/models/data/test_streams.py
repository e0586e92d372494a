"""models.data.streams: deterministic splits, packed text windows, bucketed supervised batches, resumable streams."""

from __future__ import annotations

import torch

from models.data.records import DataFile, Example, parse_record
from models.data.streams import IGNORE, RecordStream, TextStream, collate, encode_example, fork, make_stream, split
from models.data.tokenizer import Tokenizer
from tests.conftest import corpus_texts, record_objects


def examples(n: int = 120) -> list[Example]:
    out = []
    for i, obj in enumerate(record_objects(n)):
        ex = parse_record(obj, i + 1, [])
        assert isinstance(ex, Example)
        out.append(ex)
    return out


# --- split ---------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    items = [f"doc {i}" for i in range(101)]
    train, val = split(items, 0.1, seed=7)
    assert (train, val) == split(items, 0.1, seed=7)
    assert len(val) == round(101 * 0.1) == 10
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(items)
    # original order is kept within each part
    assert train == [x for x in items if x in set(train)]
    _other_train, other_val = split(items, 0.1, seed=8)
    assert other_val != val


def test_split_edge_cases() -> None:
    items = list(range(10))
    assert split(items, 0.0, 0) == (items, [])
    train, val = split(items, 0.01, 0)  # rounds to 0, but a positive fraction gets one item
    assert len(val) == 1 and len(train) == 9
    train, val = split([1, 2], 0.5, 0)
    assert len(train) == 1 and len(val) == 1
    assert split([5], 0.5, 0) == ([5], [])  # a single item stays in train


def test_split_of_duplicates_is_by_position() -> None:
    items = ["same"] * 20
    train, val = split(items, 0.25, 3)
    assert len(train) == 15 and len(val) == 5


# --- text streams ----------------------------------------------------------------------------


def text_stream(tok: Tokenizer, n_docs: int = 60, block: int = 16, key: str = "c") -> TextStream:
    return TextStream(corpus_texts(n_docs), tok, block, seed=0, key=key)


def test_text_batches_are_shifted_windows_of_the_stream(tokenizer: Tokenizer) -> None:
    s = text_stream(tokenizer)
    assert s.num_tokens == sum(len(tokenizer.encode(t)) + 1 for t in corpus_texts(60))
    stream = s.tokens.tolist()
    for _ in range(5):
        b = s.next_batch(4)
        assert b.idx.shape == b.targets.shape == (4, 16)
        assert torch.equal(b.targets, b.completion_targets)
        assert torch.equal(b.idx[:, 1:], b.targets[:, :-1])
        assert b.tokens == 4 * 16
        for row_x, row_y in zip(b.idx.tolist(), b.targets.tolist(), strict=True):
            window = [*row_x, row_y[-1]]
            starts = [i for i in range(len(stream) - 16) if stream[i : i + 17] == window]
            assert starts, "a batch row is not a contiguous window of the token stream"


def test_text_epoch_covers_every_window_once(tokenizer: Tokenizer) -> None:
    s = text_stream(tokenizer, n_docs=20)
    n_windows = len(s._windows())
    offset, block, toks = s._offset, s.block, s.tokens.tolist()
    assert n_windows == (s.num_tokens - 1 - offset) // block
    rows = sorted(tuple(r) for _ in range(n_windows) for r in s.next_batch(1).idx.tolist())
    expected = sorted(tuple(toks[offset + k * block : offset + (k + 1) * block]) for k in range(n_windows))
    assert rows == expected
    assert s.state() == {"epoch": 0, "cursor": n_windows}
    s.next_batch(1)
    assert s.state() == {"epoch": 1, "cursor": 1}


def test_text_stream_state_reproduces_batches_across_epochs(tokenizer: Tokenizer) -> None:
    a = text_stream(tokenizer, n_docs=20)
    for _ in range(3):
        a.next_batch(4)
    saved = dict(a.state())
    expected = [a.next_batch(4) for _ in range(12)]  # crosses at least one epoch boundary
    assert a.state()["epoch"] >= 1
    b = text_stream(tokenizer, n_docs=20)
    b.load_state(saved)
    for want in expected:
        got = b.next_batch(4)
        assert torch.equal(got.idx, want.idx) and torch.equal(got.targets, want.targets)
    # a stream with the same seed and key produces the same order from scratch, another key does not
    c, d = text_stream(tokenizer, n_docs=20), text_stream(tokenizer, n_docs=20, key="other")
    first = text_stream(tokenizer, n_docs=20).next_batch(8).idx
    assert torch.equal(c.next_batch(8).idx, first)
    assert not torch.equal(d.next_batch(8).idx, first)


def test_fork_has_its_own_position_and_order(tokenizer: Tokenizer) -> None:
    base = text_stream(tokenizer)
    base.next_batch(4)
    f = fork(base, "c/1")
    assert f.state() == {"epoch": 0, "cursor": 0}
    assert base.state() == {"epoch": 0, "cursor": 4}
    assert f.tokens is base.tokens  # type: ignore[union-attr]
    assert not torch.equal(f.next_batch(8).idx, text_stream(tokenizer).next_batch(8).idx)
    assert base.state() == {"epoch": 0, "cursor": 4}


def test_text_eval_batches_are_fixed(tokenizer: Tokenizer) -> None:
    s = text_stream(tokenizer)
    a = [b.idx for b in s.eval_batches(4, 3 * 4 * 16)]
    s.next_batch(4)
    b = [b.idx for b in s.eval_batches(4, 3 * 4 * 16)]
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(a[0][0], s.tokens[:16])  # type: ignore[union-attr]


# --- supervised records ----------------------------------------------------------------------


def test_encode_example_layout(tokenizer: Tokenizer) -> None:
    ex = Example("How many maps?", " 3")
    ids, sep = encode_example(tokenizer, ex, 64)
    p, c = tokenizer.encode(ex.prompt), tokenizer.encode(ex.completion)
    assert ids == [*p, tokenizer.sep_id, *c, tokenizer.eos_id]
    assert sep == len(p) and ids[sep] == tokenizer.sep_id


def test_encode_example_truncates_long_prompts_from_the_left(tokenizer: Tokenizer) -> None:
    ex = Example("word " * 200 + "end of prompt", " answer")
    ids, sep = encode_example(tokenizer, ex, 33)
    assert len(ids) == 33
    assert ids[sep] == tokenizer.sep_id
    assert ids[sep + 1 :] == [*tokenizer.encode(" answer"), tokenizer.eos_id]
    assert tokenizer.decode(ids[:sep]).endswith("end of prompt")
    long_completion = Example("short", "word " * 200)
    ids, sep = encode_example(tokenizer, long_completion, 33)
    assert len(ids) <= 33 and ids[sep] == tokenizer.sep_id and len(ids) - sep - 1 == 33 // 2


def test_completion_targets_mask_the_prompt(tokenizer: Tokenizer) -> None:
    exs = examples(40)
    s = RecordStream(exs, tokenizer, 64, seed=0, key="pairs")
    by_ids = {tuple(ids): (ids, sep) for ids, sep in s.seqs}
    for _ in range(5):
        b = s.next_batch(8)
        for r in range(b.idx.size(0)):
            row_t, row_c, row_x = b.targets[r], b.completion_targets[r], b.idx[r]
            n = int((row_t != IGNORE).sum())
            assert bool((row_t[n:] == IGNORE).all()) and bool((row_x[n:] == tokenizer.pad_id).all())
            _ids, sep = by_ids[(*row_x[:n].tolist(), int(row_t[n - 1]))]
            assert int(row_x[sep]) == tokenizer.sep_id
            assert bool((row_c[:sep] == IGNORE).all())
            assert torch.equal(row_c[sep:n], row_t[sep:n])
            assert bool((row_c[n:] == IGNORE).all())
            assert row_c[sep:n].tolist()[-1] == tokenizer.eos_id
        assert b.tokens == int((b.targets != IGNORE).sum())


def test_completion_decodes_to_the_completion(tokenizer: Tokenizer) -> None:
    ex = Example("Say four in French.", "quatre")
    batch = collate([encode_example(tokenizer, ex, 64)], tokenizer.pad_id)
    scored = [t for t in batch.completion_targets[0].tolist() if t != IGNORE]
    assert tokenizer.decode(scored).strip() == "quatre"
    assert scored[-1] == tokenizer.eos_id


def test_record_batches_are_padded_to_their_longest(tokenizer: Tokenizer) -> None:
    exs = examples(400)
    block = 256
    s = RecordStream(exs, tokenizer, block, seed=0, key="pairs")
    lengths = [len(ids) - 1 for ids, _ in s.seqs]
    assert max(lengths) - min(lengths) >= 20, "test data should have varied lengths"
    real = padded = block_padded = 0
    n_batches = -(-len(exs) // 8)
    seen: list[int] = []
    for _ in range(n_batches):
        b = s.next_batch(8)
        rows_len = (b.targets != IGNORE).sum(1)
        assert b.idx.size(1) == int(rows_len.max())  # padded only to the longest row
        real += b.tokens
        padded += b.idx.numel()
        block_padded += b.idx.size(0) * block
        seen += [tuple(r) for r in b.idx.tolist()]  # type: ignore[misc]
    assert s.state() == {"epoch": 0, "cursor": n_batches}
    assert len(seen) == len(exs)  # one epoch sees every record once
    pad_frac, block_frac = 1 - real / padded, 1 - real / block_padded
    assert pad_frac < block_frac - 0.25, (pad_frac, block_frac)  # widely varied lengths here: 40% vs 72%


def test_record_stream_state_reproduces_batches(tokenizer: Tokenizer) -> None:
    exs = examples(60)
    a = RecordStream(exs, tokenizer, 64, seed=0, key="pairs")
    for _ in range(5):
        a.next_batch(8)
    saved = dict(a.state())
    expected = [a.next_batch(8) for _ in range(10)]  # 8 batches per epoch: crosses an epoch
    assert a.state()["epoch"] == 1
    b = RecordStream(exs, tokenizer, 64, seed=0, key="pairs")
    b.load_state(saved)
    for want in expected:
        got = b.next_batch(8)
        assert torch.equal(got.idx, want.idx)
        assert torch.equal(got.completion_targets, want.completion_targets)
    # epochs are shuffled differently
    c = RecordStream(exs, tokenizer, 64, seed=0, key="pairs")
    epoch0 = [c.next_batch(8).idx.tolist() for _ in range(8)]
    epoch1 = [c.next_batch(8).idx.tolist() for _ in range(8)]
    assert epoch0 != epoch1


def test_make_stream_by_kind(tokenizer: Tokenizer) -> None:
    assert isinstance(make_stream(DataFile("text", "txt", texts=corpus_texts(5)), tokenizer, 16, 0, "k"), TextStream)
    ds = DataFile("records", "jsonl-records", examples=examples(5))
    assert isinstance(make_stream(ds, tokenizer, 16, 0, "k"), RecordStream)


def test_record_eval_sample_is_representative_and_fixed(tokenizer: Tokenizer) -> None:
    """Validation loss is measured on a seeded sample of every length, not the shortest records."""
    s = RecordStream(examples(400), tokenizer, 64, seed=0, key="pairs/val")
    lengths = sorted(len(ids) - 1 for ids, _ in s.seqs)
    budget = sum(lengths) // 4
    sample = [int((b.targets != IGNORE).sum(1)[r]) for b in s.eval_batches(8, budget) for r in range(b.idx.size(0))]
    assert budget <= sum(sample) < budget + max(lengths)
    shortest = lengths[: len(sample)]
    assert sum(sample) / len(sample) > sum(shortest) / len(shortest) + 1  # longer records are in it too
    again = [b.idx for b in s.eval_batches(8, budget)]
    assert all(torch.equal(x, y) for x, y in zip(again, [b.idx for b in s.eval_batches(8, budget)], strict=True))
