"""Step-wise batched decoding for serving: rows join and leave between decode steps.

The forward pass is the model family's serving net (models/families/<arch>/serving.py, a
`models.layers.serving.ServingNet`: the model's function in fewer operations); its decode steps
may instead run in C++ (`native`: models/inference/native.py) or compiled (`compile`). Each row
keeps its own slot of a preallocated KV cache, its own length, sampling settings, random
generator, stop strings and token budget. New rows are prefilled (prompts of one length
together, their keys and values written straight into their slots); every `step()` then
decodes one token for all rows at once. Rows stay packed at the front of the cache (a
finished row's slot takes the last row's), so a step only ever reads `[:n]` views.

Every step writes all rows' new keys at one shared column (a plain slice); rows that
joined at different times carry gaps that a persistent key mask hides (see
models/inference/slot_cache.py), and when no row has one (batch 1, or rows that started
together) no mask is used. A streaming row hands out only text that is final
(models/inference/text.py).

Rows never reach each other: every operation of a step is per row (the adapter bank
computes products for the adapted rows only, a slot's keys and values are zeroed when its
row leaves), so a NaN or an infinity in one row's adapter stays in that row. A row whose logits are not finite
(a NaN, an infinity) ends there, `finish_reason` "error" with `error` saying why; the others go on.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.data.tokenizer import Tokenizer
from models.families.build import Model, serving_net
from models.inference import native as native_step
from models.inference.compiled import CompiledStep
from models.inference.generate import Sampling, finished_text, pick
from models.inference.slot_cache import SlotCache
from models.inference.text import streamable_text
from models.layers.kv_cache import KVCache
from models.lora.layers import Adapter


@dataclass(eq=False)
class Row:
    """One request. `supervised`: the prompt ends with the completion marker, and the
    completion's leading space is dropped from the text (as `models.inference.generate.complete`)."""

    prompt: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    supervised: bool = False
    stream: bool = False  # decode text after every token (for streaming), not only at the end
    ignore_eos: bool = False  # run to the budget (benchmarks, fixed-length batches)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the text so far (final once finish_reason is set)
    sent: int = 0  # characters of `text` already handed out by `delta()`
    finish_reason: str | None = None  # "stop" (end token or stop string) | "length" | "cancelled" | "error"
    error: str | None = None  # why the row ended with "error" (non-finite logits)
    cancelled: bool = False  # set by the owner: the row is dropped at the next step
    budget: int = 0
    generator: torch.Generator | None = None
    adapter: str | None = None  # a LoRA adapter added with Decoder.add_adapter; None: the base alone

    def delta(self) -> str:
        """Text produced since the last call."""
        new = self.text[self.sent :]
        self.sent = len(self.text)
        return new


KV_CACHES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # Decoder(kv_cache=...)
BROKEN = "the model's weights, or its adapter's, are broken"
PREFILL_TOKENS_PER_STEP = 4096  # prompt tokens admitted in one step (at least one prompt, whatever its length)


class Decoder:
    """Continuous batching over one model. Not thread-safe: one thread calls add/step."""

    def __init__(
        self,
        model: Model,
        tok: Tokenizer,
        max_batch: int = 16,
        precision: str = "fp32",
        group_size: int = 64,
        compile: bool = False,
        kv_cache: str = "fp32",
        native: bool = False,
    ):
        """`precision`: "fp32" (the model's weights), or "int8" / "int4" / "nf4" weight-only
        (models.layers.quantized; `group_size`: int4's). `compile`: decode steps through
        torch.compile, compiled here, on a CPU (models/inference/compiled.py). `kv_cache`: the
        keys' and values' element type, "fp32" (the net's own dtype) or "bf16": half the bytes and
        half the memory attention reads (its sums still fp32): for SmolLM2's shapes, attention 18%
        faster at 8 rows of 160 positions and a third at 1,024, 4% slower at one row of 160
        (benchmarks/RESULTS.md, "A bf16 KV cache"). `native`: decode steps in C++ (Llama-family and
        GPT models on a CPU: models/inference/native.py), in place of `compile`; `step_kind` says
        which runs: "native", "compiled" or "eager"."""
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHES)}, not {kv_cache!r}")
        use_native = native and native_step.wanted(model)
        layout = native_step.fp32_layout() if use_native else "packed"
        self.net = serving_net(model, precision, group_size, layout=layout)
        self.step_kind = "eager"
        if use_native:
            self.net.decode_step, self.step_kind = native_step.NativeStep(self.net), "native"
        self.precision = precision
        self.kv_dtype = self.net.dtype if kv_cache == "fp32" else KV_CACHES[kv_cache]
        self.tok, self.max_batch = tok, max_batch
        self.end_ids = set(tok.end_ids)  # the model's end-of-sequence / end-of-turn tokens, and ours
        self.block = model.config.block_size
        self.waiting: deque[Row] = deque()
        self.rows: list[Row] = []  # row i is in cache slot i
        self.cache: SlotCache | None = None
        self.steps = 0  # batched decode steps run, and the rows they decoded (for monitoring)
        self.rows_decoded = 0
        if compile and not use_native and self.net.device.type == "cpu":  # CUDA untested here (no GPU): eager
            self._compile()
            self.step_kind = "compiled"

    def _compile(self) -> None:
        """Compile the decode steps now (models/inference/compiled.py): one row, rows that start
        together and rows that joined at different times (a key mask), at one row and at two
        (a batch size of 2 or more is one graph); then freeze them and forget the rows."""
        step = self.net.decode_step = CompiledStep(self.net)

        def run(*rows: Row, join: Row | None = None) -> None:
            for r in rows:
                self.add(r)
            self.step()  # the prefill
            if join is not None:
                self.add(join)
            while self.busy:
                self.step()

        def row() -> Row:
            return Row([0, 0], Sampling(max_new_tokens=4), ignore_eos=True)  # any two tokens

        run(row())  # one row
        run(row(), row())  # two together
        run(row(), join=row())  # two with a mask, then one with it (the first row ends first)
        step.frozen = True
        self.steps = self.rows_decoded = 0

    @property
    def kv_bytes(self) -> int:
        """The bytes of the KV cache `step` allocates: keys and values of every layer, `max_batch`
        rows of the whole context."""
        c = self.net.config
        return 2 * c.n_layer * self.max_batch * self.block * c.n_kv_head * c.head_dim * self.kv_dtype.itemsize

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def add_adapter(self, name: str, adapter: Adapter) -> None:
        """Serve `adapter` (models.lora.layers.Adapter) beside the base; rows name it in `Row.adapter`.
        Call between steps, like `add`; adding a name again replaces that adapter."""
        self.net.adapters.add(name, adapter)

    def remove_adapter(self, name: str) -> None:
        if any(r.adapter == name for r in [*self.rows, *self.waiting]):
            raise ValueError(f"adapter '{name}' is in use")
        self.net.adapters.remove(name)

    def _adapter_rows(self, rows: list[Row]) -> Tensor | None:
        if all(r.adapter is None for r in rows):
            return None
        bank = self.net.adapters
        slots = [bank.index(r.adapter) for r in rows]
        return torch.tensor(slots, device=self.net.device)

    def _logits(self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, rows: list[Row]) -> Tensor:
        adapters = self._adapter_rows(rows)
        if adapters is None:
            return self.net.last_logits(idx, positions, cache, mask)
        return self.net.last_logits(idx, positions, cache, mask, adapters)

    def add(self, row: Row) -> None:
        if row.adapter is not None and row.adapter not in self.net.adapters.slots:
            raise ValueError(f"unknown adapter '{row.adapter}'")
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
            self.cache = SlotCache(self.net.config, self.max_batch, self.net.device, self.kv_dtype)
        changed: list[Row] = []
        old = len(self.rows)
        if old:
            positions, mask = self.cache.prepare()
            last = torch.tensor([[r.tokens[-1]] for r in self.rows], device=positions.device)
            logits = self._logits(last, positions, self.cache, mask, self.rows)
            for i in range(old):
                self.cache.lens[i] += 1
            self.steps += 1
            self.rows_decoded += old
            self._advance(self.rows, logits, changed)
            self._drop_finished()
        joining: list[Row] = []
        budget = PREFILL_TOKENS_PER_STEP  # so one step's prefill, and the rows' wait for it, stays bounded
        while self.waiting and len(self.rows) + len(joining) < self.max_batch:
            row = self.waiting[0]
            if joining and len(row.prompt) > budget:
                break  # it joins at the next step
            self.waiting.popleft()
            if row.cancelled:
                row.finish_reason = "cancelled"
                changed.append(row)
            else:
                budget -= len(row.prompt)
                joining.append(row)
        # Prompts of one length are prefilled together: one forward for requests that came at once.
        for length, group in itertools.groupby(sorted(joining, key=lambda r: len(r.prompt)), lambda r: len(r.prompt)):
            rows = list(group)
            self.rows += rows
            view = self.cache.admit(length, len(rows))
            idx = torch.tensor([r.prompt for r in rows], device=self.net.device)
            positions = torch.arange(length, device=self.net.device)[None]
            logits = self._logits(idx, positions, view, None, rows)
            self._advance(rows, logits, changed)
        self._drop_finished()
        return changed

    def _advance(self, rows: list[Row], logits: Tensor, changed: list[Row]) -> None:
        logits = logits if logits.dtype == torch.float32 else logits.float()
        # Each row's greedy token, or -1 where its largest logit is not finite (a NaN anywhere, an
        # infinity, or nothing above -inf): nothing to pick from. One operation, as argmax was.
        top, greedy = logits.max(-1)
        picked: list[int] = [t if math.isfinite(v) else -1 for v, t in zip(top.tolist(), greedy.tolist())]
        for i, r in enumerate(rows):
            if r.sampling.temperature > 0 and picked[i] >= 0:
                picked[i] = int(pick(logits[i : i + 1], r.sampling, r.generator)[0])
        for r, t in zip(rows, picked):
            if r.cancelled:
                r.finish_reason = "cancelled"
            elif t < 0:
                r.finish_reason = "error"
                r.error = f"non-finite logits (NaN or infinity) at generated token {len(r.tokens) + 1}: {BROKEN}"
            elif t in self.end_ids and not r.ignore_eos:
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

    def _update_text(self, r: Row) -> None:
        safe = streamable_text(self.tok.decode(r.tokens), r.stop, r.supervised)
        if safe is None:
            r.finish_reason = "stop"
        elif len(safe) > len(r.text) and safe.startswith(r.text):
            r.text = safe

    def _final_text(self, r: Row) -> None:
        r.text = finished_text(self.tok.decode(r.tokens), r.stop, r.supervised)

    def _drop_finished(self) -> None:
        assert self.cache is not None
        i = 0
        while i < len(self.rows):
            if self.rows[i].finish_reason is None:
                i += 1
                continue
            self.cache.remove(i)
            self.rows[i] = self.rows[-1]
            self.rows.pop()

    def close(self) -> None:
        """Finish every row as cancelled (the model is going away)."""
        for r in [*self.rows, *self.waiting]:
            r.finish_reason = r.finish_reason or "cancelled"
        self.rows.clear()
        self.waiting.clear()
        self.cache = None
