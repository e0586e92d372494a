"""Preference pairs as training batches: each pair is two supervised sequences, the prompt with
the chosen completion and the prompt with the rejected one, encoded as finetune records are
(`prompt <|completion|> completion <|endoftext|>`, or on a chat model the conversation rendered
by its template, scored on the final assistant turn and its end-of-turn token only).

A batch of B pairs is one padded batch of 2B rows, the B chosen sequences then the B rejected
(TRL's concatenated layout), so a model takes both in one forward pass. The stream shuffles
and resumes exactly as RecordStream does (its state is the same two integers); `ref`, the
reference model's log-probs of each pair when they are computed ahead (models/training/reference.py),
and `loss`, the loss an evaluation of the data measures, are set by the training run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from models.data.chat import ChatFormat, encode_chat
from models.data.chat_records import task_messages
from models.data.preference import PreferencePair
from models.data.records import DataFile, Example
from models.data.streams import Batch, RecordStream, Seq, Stream, collate, encode_example, make_stream, stable_seed
from models.data.tokenizer import Tokenizer
from models.spec.preference import DPOLoss, IPOLoss, ORPOLoss, SimPOLoss

AnyPreferenceLoss = DPOLoss | IPOLoss | SimPOLoss | ORPOLoss


@dataclass
class PairBatch(Batch):
    """2B rows (chosen, then rejected) of B pairs; `pair_ids` the pairs' indices in their data,
    `ref` (B, 2) their reference log-probs (chosen, rejected) where computed ahead."""

    pair_ids: Tensor | None = None
    ref: Tensor | None = None

    @property
    def pairs(self) -> int:
        return self.idx.size(0) // 2

    def to(self, device: torch.device) -> PairBatch:
        b = super().to(device)
        ref = None if self.ref is None else self.ref.to(device)
        return PairBatch(b.idx, b.targets, b.completion_targets, b.tokens, self.pair_ids, ref)


def final_turn(mask: list[int]) -> list[int]:
    """Only the last run of scored tokens: the final assistant turn (and its end of turn)."""
    end = max((i for i, m in enumerate(mask) if m), default=-1)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [1 if start <= i <= end and end >= 0 else 0 for i in range(len(mask))]


def encode_pair(pair: PreferencePair, tok: Tokenizer, max_len: int, chat: ChatFormat | None) -> tuple[Seq, Seq]:
    """The (chosen, rejected) sequences of a pair, each at most max_len tokens."""
    if chat is None:
        chosen, rejected = (encode_example(tok, Example(pair.prompt, c), max_len) for c in (pair.chosen, pair.rejected))
        return chosen, rejected
    turns = pair.messages if pair.messages is not None else task_messages(pair.prompt)
    seqs = []
    for reply in (pair.chosen, pair.rejected):
        ids, mask = encode_chat([*turns, {"role": "assistant", "content": reply}], chat, tok.hf, max_len)
        seqs.append((ids, final_turn(mask)))
    return seqs[0], seqs[1]


class PreferenceStream(RecordStream):
    """Preference pairs in random batches (RecordStream's order and state), each a PairBatch."""

    def __init__(
        self,
        pairs: list[PreferencePair],
        tok: Tokenizer,
        block_size: int,
        seed: int,
        key: str,
        chat: ChatFormat | None = None,
    ):
        encoded = [encode_pair(p, tok, block_size + 1, chat) for p in pairs]
        self.seqs = [c for c, _ in encoded]  # RecordStream draws its batches over these
        self.rejected: list[Seq] = [r for _, r in encoded]
        self.pad_id = tok.pad_id
        self.seed, self.key = seed, key
        self.epoch, self.cursor = 0, 0
        self._batches: list[list[int]] | None = None
        self._batch_size = 0
        self.ref: Tensor | None = None  # (pairs, 2) reference log-probs, NaN where not computed
        self.loss: AnyPreferenceLoss | None = None  # what an evaluation of this data measures

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) - 1 for ids, _ in [*self.seqs, *self.rejected])

    def batch_of(self, rows: list[int]) -> PairBatch:
        b = collate([self.seqs[i] for i in rows] + [self.rejected[i] for i in rows], self.pad_id)
        ref = None if self.ref is None else self.ref[rows]
        return PairBatch(b.idx, b.targets, b.completion_targets, b.tokens, torch.tensor(rows), ref)

    def next_batch(self, batch_size: int) -> PairBatch:
        batches = self._epoch_batches(batch_size)
        if self.cursor >= len(batches):
            self.epoch, self.cursor, self._batches = self.epoch + 1, 0, None
            batches = self._epoch_batches(batch_size)
        rows = batches[self.cursor]
        self.cursor += 1
        return self.batch_of(rows)

    def eval_rows(self, max_tokens: int) -> list[int]:
        """A fixed sample of pairs of about max_tokens tokens (a seeded shuffle), shortest first."""
        g = torch.Generator().manual_seed(stable_seed(self.seed, self.key, "eval"))
        chosen, total = [], 0
        for i in torch.randperm(len(self.seqs), generator=g).tolist():
            if total >= max_tokens:
                break
            chosen.append(i)
            total += len(self.seqs[i][0]) + len(self.rejected[i][0]) - 2
        return sorted(chosen, key=lambda i: len(self.seqs[i][0]) + len(self.rejected[i][0]))

    def eval_batches(self, batch_size: int, max_tokens: int) -> Iterator[PairBatch]:
        rows = self.eval_rows(max_tokens)
        for b in range(0, len(rows), batch_size):
            yield self.batch_of(rows[b : b + batch_size])

    def all_batches(self, batch_size: int) -> Iterator[PairBatch]:
        """Every pair in order: what reference log-probs are computed ahead over."""
        for b in range(0, len(self.seqs), batch_size):
            yield self.batch_of(list(range(b, min(b + batch_size, len(self.seqs)))))


def make_any_stream(
    dataset: DataFile, tok: Tokenizer, block_size: int, seed: int, key: str, chat: ChatFormat | None = None
) -> Stream:
    """models.data.streams.make_stream, and a PreferenceStream for preference records."""
    if dataset.kind == "preference":
        return PreferenceStream(dataset.pairs, tok, block_size, seed, key, chat)
    return make_stream(dataset, tok, block_size, seed, key, chat)
