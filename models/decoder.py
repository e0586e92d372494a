"""Step-wise batched decoding for serving: rows join and leave between decode steps.

The forward pass is `models.serving_gpt.ServingGPT` (GPT's function in fewer operations).
Each row keeps its own slot of a preallocated KV cache, its own length, sampling
settings, random generator, stop strings and token budget. A new row is prefilled on
its own (its prompt's keys and values written straight into its slot); every `step()`
then decodes one token for all rows at once. Rows stay packed at the front of the cache
(a finished row's slot takes the last row's), so a step only ever reads `[:n]` views.

When every row has the same length (batch 1, or rows that started together) a step
needs no attention mask and writes the new keys with a plain slice; otherwise one
boolean key mask (n, 1, 1, end) and one indexed write per layer.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.generate import Sampling, pick
from models.gpt import GPT, GPTConfig, KVCache
from models.serving_gpt import ServingGPT
from models.tokenizer import Tokenizer


@dataclass(eq=False)
class Row:
    """One request. `supervised`: the prompt ends with the completion marker, and the
    completion's leading space is dropped from the text (as `models.generate.complete`)."""

    prompt: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    supervised: bool = False
    stream: bool = False  # decode text after every token (for streaming), not only at the end
    ignore_eos: bool = False  # run to the budget (benchmarks, fixed-length batches)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the text so far (final once finish_reason is set)
    sent: int = 0  # characters of `text` already handed out by `delta()`
    finish_reason: str | None = None  # "stop" (end token or stop string) | "length" | "cancelled"
    cancelled: bool = False  # set by the owner: the row is dropped at the next step
    budget: int = 0
    generator: torch.Generator | None = None

    def delta(self) -> str:
        """Text produced since the last call."""
        new = self.text[self.sent :]
        self.sent = len(self.text)
        return new


class SlotCache(KVCache):
    """Keys and values for `slots` rows, each at its own length (`lens`)."""

    def __init__(self, config: GPTConfig, slots: int, device: torch.device, dtype: torch.dtype):
        super().__init__(config, slots, device, dtype)
        self.lens: list[int] = []
        self.index: tuple[Tensor, Tensor] | None = None  # (rows, positions) when lengths differ

    def slot(self, i: int) -> KVCache:
        """Slot i as an empty one-row cache whose writes land in this one (for a prefill)."""
        view = KVCache.__new__(KVCache)
        view.k = [k[i : i + 1] for k in self.k]
        view.v = [v[i : i + 1] for v in self.v]
        view.length = 0
        return view

    def prepare(self) -> tuple[Tensor, Tensor | None]:
        """Positions (n, 1) of the next token of each row, and the key mask (None if not needed)."""
        device = self.k[0].device
        pos = torch.tensor(self.lens, device=device)
        end = max(self.lens) + 1
        self.length = end - 1  # GPT.hidden checks length + 1 against the context
        if min(self.lens) == self.length:
            self.index = None
            return pos[:, None], None
        self.index = (torch.arange(len(self.lens), device=device), pos)
        mask = torch.arange(end, device=device)[None, :] <= pos[:, None]
        return pos[:, None], mask[:, None, None, :]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        n, end = k.size(0), self.length + 1
        if self.index is None:
            self.k[layer][:n, :, self.length : end] = k
            self.v[layer][:n, :, self.length : end] = v
        else:
            rows, pos = self.index
            self.k[layer][rows, :, pos] = k[:, :, 0]
            self.v[layer][rows, :, pos] = v[:, :, 0]
        return self.k[layer][:n, :, :end], self.v[layer][:n, :, :end]

    def move(self, src: int, dst: int) -> None:
        n = self.lens[src]
        for cache in (self.k, self.v):
            for t in cache:
                t[dst, :, :n] = t[src, :, :n]
        self.lens[dst] = n


class Decoder:
    """Continuous batching over one model. Not thread-safe: one thread calls add/step."""

    def __init__(self, model: GPT, tok: Tokenizer, max_batch: int = 16):
        self.net, self.tok, self.max_batch = ServingGPT(model), tok, max_batch
        self.block = model.config.block_size
        self.waiting: deque[Row] = deque()
        self.rows: list[Row] = []  # row i is in cache slot i
        self.cache: SlotCache | None = None
        self.steps = 0  # batched decode steps run, and the rows they decoded (for monitoring)
        self.rows_decoded = 0

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def add(self, row: Row) -> None:
        if not row.prompt or len(row.prompt) >= self.block:
            raise ValueError(f"a prompt needs 1 to {self.block - 1} tokens, got {len(row.prompt)}")
        row.budget = min(row.sampling.max_new_tokens, self.block - len(row.prompt))
        if row.sampling.temperature > 0:
            seed = row.sampling.seed if row.sampling.seed is not None else secrets.randbits(63)
            row.generator = torch.Generator(self.net.device).manual_seed(seed)
        self.waiting.append(row)

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Admit waiting rows (prefill, first token), decode one token for the others.

        Returns the rows that changed: new text to stream, or finished (then removed).
        """
        if self.cache is None:
            self.cache = SlotCache(self.net.config, self.max_batch, self.net.device, self.net.dtype)
        changed: list[Row] = []
        old = len(self.rows)
        if old:
            positions, mask = self.cache.prepare()
            last = torch.tensor([[r.tokens[-1]] for r in self.rows], device=positions.device)
            logits = self.net.last_logits(last, positions, self.cache, mask)
            for i in range(old):
                self.cache.lens[i] += 1
            self.steps += 1
            self.rows_decoded += old
            self._advance(self.rows, logits, changed)
            self._drop_finished()
        while self.waiting and len(self.rows) < self.max_batch:
            row = self.waiting.popleft()
            if row.cancelled:
                row.finish_reason = "cancelled"
                changed.append(row)
                continue
            slot = len(self.rows)
            self.rows.append(row)
            self.cache.lens.append(len(row.prompt))
            idx = torch.tensor([row.prompt], device=self.net.device)
            positions = torch.arange(idx.size(1), device=self.net.device)[None]
            self._advance([row], self.net.last_logits(idx, positions, self.cache.slot(slot), None), changed)
        self._drop_finished()
        return changed

    def _advance(self, rows: list[Row], logits: Tensor, changed: list[Row]) -> None:
        logits = logits.float()
        greedy = [r.sampling.temperature <= 0 for r in rows]
        picked: list[int] = logits.argmax(-1).tolist() if any(greedy) else [0] * len(rows)
        for i, r in enumerate(rows):
            if not greedy[i]:
                picked[i] = int(pick(logits[i : i + 1], r.sampling, r.generator)[0])
        for r, t in zip(rows, picked):
            if r.cancelled:
                r.finish_reason = "cancelled"
            elif t == self.tok.eos_id and not r.ignore_eos:
                r.finish_reason = "stop"
            else:
                r.tokens.append(t)
                if r.stop or r.stream:
                    self._update_text(r)
                if r.finish_reason is None and len(r.tokens) >= r.budget:
                    r.finish_reason = "length"
            if r.finish_reason is not None:
                self._final_text(r)
            if r.finish_reason is not None or r.stream:
                changed.append(r)

    def _decode(self, r: Row) -> str:
        text = self.tok.decode(r.tokens)
        return text[1:] if r.supervised and text.startswith(" ") else text

    def _update_text(self, r: Row) -> None:
        raw = self.tok.decode(r.tokens)
        cut = min((i for i in (raw.find(s) for s in r.stop) if i >= 0), default=-1)
        if cut >= 0:
            r.finish_reason = "stop"
            return
        # Hold back an unfinished character and anything that may begin a stop string.
        safe = raw.rstrip("\ufffd")
        hold = max((n for s in r.stop for n in range(len(s) - 1, 0, -1) if safe.endswith(s[:n])), default=0)
        safe = safe[: len(safe) - hold]
        if r.supervised and safe.startswith(" "):
            safe = safe[1:]
        if len(safe) > len(r.text) and safe.startswith(r.text):
            r.text = safe

    def _final_text(self, r: Row) -> None:
        raw = self.tok.decode(r.tokens)
        for s in r.stop:
            i = raw.find(s)
            if i >= 0:
                raw = raw[:i]
        r.text = raw[1:] if r.supervised and raw.startswith(" ") else raw

    def _drop_finished(self) -> None:
        assert self.cache is not None
        i = 0
        while i < len(self.rows):
            if self.rows[i].finish_reason is None:
                i += 1
                continue
            last = len(self.rows) - 1
            if i != last:
                self.cache.move(last, i)
                self.rows[i] = self.rows[last]
            self.rows.pop()
            self.cache.lens.pop()

    def close(self) -> None:
        """Finish every row as cancelled (the model is going away)."""
        for r in [*self.rows, *self.waiting]:
            r.finish_reason = r.finish_reason or "cancelled"
        self.rows.clear()
        self.waiting.clear()
        self.cache = None
