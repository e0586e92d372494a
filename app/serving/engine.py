"""In-process inference: a model cache bounded by memory, and dynamic batching.

- `ModelCache.get` loads a model directory on the inference thread (the event loop never waits
  on torch, imported there, not when the API starts), keeps it in an LRU cache bounded by bytes
  (weights + the batch's KV cache), and makes concurrent first requests for one model share a single load.
- Each loaded model has a `Batcher`, and one `InferenceThread` runs `models.inference.decoder.Decoder.step`
  for every model with active requests. Requests join at any time and are admitted
  between decode steps, so concurrent requests share one batched forward per token,
  each with its own sampling settings, stop strings and token budget.
- Results come back to the event loop with `call_soon_threadsafe`; a request whose
  client goes away is cancelled and leaves the batch at the next step.
- A request that fails ends with finish_reason "error", the one way a row reports one: with
  `Update.error` set when its own model went wrong (non-finite logits: that row alone
  ends, the others go on), without it when a step failed (every row of the batch ends).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from app.config import kv_cache_type
from app.serving import meters

if TYPE_CHECKING:
    from models.data.chat import ChatFormat
    from models.data.tokenizer import Tokenizer
    from models.families.build import ModelConfig
    from models.inference.decoder import Decoder, Row
    from models.inference.generate import Sampling

log = logging.getLogger("stagecraft.inference")
Sink = Callable[["Row", str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Update:
    text: str  # new text since the previous update
    finish_reason: str | None  # set on the last update
    tokens: int  # completion tokens so far
    error: str | None = None  # with finish_reason "error": what the model did (None: our failure, logged)


class InferenceThread:
    """The one thread that runs torch for serving: model loads and every model's decode steps.

    One thread for all models, not one each: every thread that runs torch brings its own
    OpenMP team, and once a process has more OpenMP threads than CPUs, libgomp stops
    spin-waiting between parallel regions, so each of the many small regions of a decode
    step pays a thread wake-up. With a second torch thread merely alive, decoding ran about
    1.7x slower on a 2-CPU machine (benchmarks/RESULTS.md). Models with requests take
    turns, one decode step each; a load runs between steps.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jobs: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self.batchers: list[Batcher] = []  # models with requests (queued or decoding)
        self.thread: threading.Thread | None = None

    def _wake(self) -> None:  # with self.cond held
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="inference", daemon=True)
            self.thread.start()
        self.cond.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn on this thread (between decode steps)."""
        future: Future[T] = Future()
        with self.cond:
            self.jobs.append((fn, future))  # type: ignore[arg-type]
            self._wake()
        return future

    def activate(self, batcher: Batcher) -> None:  # with self.cond held
        if batcher not in self.batchers:
            self.batchers.append(batcher)
        self._wake()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.batchers:
                    if not self.cond.wait(timeout=30.0):
                        self.thread = None  # idle: a later request starts a new thread
                        return
                job = self.jobs.popleft() if self.jobs else None
                batchers = list(self.batchers)
            if job is not None:
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the awaiting request
                        future.set_exception(exc)
            for batcher in batchers:
                batcher.step()
                with self.cond:
                    if not batcher.incoming and not batcher.decoder.busy:
                        self.batchers.remove(batcher)


class Batcher:
    """One model's requests and its decoder, stepped by the InferenceThread."""

    def __init__(self, decoder: Decoder, name: str, runner: InferenceThread):
        self.decoder, self.name, self.runner = decoder, name, runner
        self.incoming: list[tuple[Row, Sink]] = []
        self.sinks: dict[int, Sink] = {}

    def submit(self, row: Row, sink: Sink) -> None:
        meters.submitted(row)  # its latency and time to first token start now
        with self.runner.cond:
            self.incoming.append((row, sink))
            self.runner.activate(self)

    def step(self) -> None:
        """Admit new requests, decode one token for every row, hand out the updates."""
        with self.runner.cond:
            new, self.incoming = self.incoming, []
        for row, sink in new:
            try:
                self.decoder.add(row)
            except ValueError:  # the routes check prompts first; this is a last guard
                row.finish_reason = "error"
                sink(row, "")
                continue
            self.sinks[id(row)] = sink
        steps, rows = self.decoder.steps, self.decoder.rows_decoded
        try:
            changed = self.decoder.step()
            meters.stepped(self.decoder, steps, rows)
        except Exception:
            log.exception("decode step failed on %s", self.name)
            changed = [*self.decoder.rows, *self.decoder.waiting]
            self.decoder.close()
            for row in changed:
                row.finish_reason = "error"
        for row in changed:
            if row.finish_reason is None:
                self.sinks[id(row)](row, row.delta())
            else:
                meters.finished(row)
                self.sinks.pop(id(row))(row, row.delta())


@dataclass
class Served:
    key: str
    config: ModelConfig
    tok: Tokenizer
    nbytes: int
    batcher: Batcher
    chat: ChatFormat | None = None  # its chat template: chat and task prompts are rendered by it
    adapters: set[str] = field(default_factory=set)  # LoRA adapters added to its decoder (by folder)
    precision: str = "fp32"  # its projections' weights: fp32, int8, int4 or nf4 (app/serving/precision.py)

    @property
    def block_size(self) -> int:
        return self.config.block_size


def _load(cache: ModelCache, key: str, directory: Path, precision: str) -> Served:
    import torch

    from models.formats.load import load_model
    from models.inference.decoder import Decoder

    if cache.threads > 0:
        torch.set_num_threads(cache.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cache.device == "auto" else cache.device
    model, tok = load_model(directory, device=device)
    kv_cache = kv_cache_type(cache.kv_cache, precision)
    decoder = Decoder(model, tok, cache.max_batch, precision, cache.group_size, cache.compile, kv_cache, cache.native)
    nbytes = decoder.net.nbytes() + decoder.kv_bytes
    return Served(key, model.config, tok, nbytes, Batcher(decoder, key, cache.runner), precision=precision)


def _add_chat(served: Served, directory: Path) -> None:
    """Its chat template, and the template's end-of-turn ids among those generation ends at: found by
    rendering it (the uploader's code), so on a worker thread, not the inference thread."""
    from models.data.chat import stop_token_ids
    from models.formats.load import served_chat_format

    chat = served_chat_format(directory, served.tok)
    if chat is not None:
        served.batcher.decoder.end_ids |= stop_token_ids(chat, served.tok.hf, served.tok.end_ids)
    served.chat = chat


class ModelCache:
    """The model cache, keyed by (model folder, precision). Used from the event loop only (no locks needed there)."""

    def __init__(self, max_bytes: int, max_batch: int, device: str = "auto", threads: int = 0, group_size: int = 64,
                 compile: bool = False, kv_cache: str = "auto", native: bool = True):  # fmt: skip
        self.max_bytes, self.max_batch, self.device, self.threads = max_bytes, max_batch, device, threads
        self.group_size, self.compile, self.kv_cache, self.native = group_size, compile, kv_cache, native
        self.entries: OrderedDict[tuple[str, str], Served] = OrderedDict()
        self.loading: dict[tuple[str, str], asyncio.Task[Served]] = {}
        self.runner = InferenceThread()
        meters.watch(self)  # its bytes in stagecraft_inference_model_cache_bytes

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.entries.values())

    async def run(self, fn: Callable[[], T]) -> T:
        """fn() on the inference thread: for any torch work of the API process (model import and
        export too), so that decoding never shares the CPUs with a second OpenMP team."""
        return await asyncio.wrap_future(self.runner.call(fn))

    def loaded(self, key: str) -> list[str]:
        return [precision for k, precision in list(self.entries) if k == key]  # list(): one C call, any thread

    async def get(self, key: str, directory: Path, precision: str = "fp32") -> Served:
        served = self.entries.get((key, precision))
        if served is not None:
            self.entries.move_to_end((key, precision))
            return served
        task = self.loading.get((key, precision))
        if task is None:
            task = asyncio.create_task(self._load(key, directory, precision))
            self.loading[key, precision] = task
        return await asyncio.shield(task)

    async def _load(self, key: str, directory: Path, precision: str) -> Served:
        try:
            served = await self.run(lambda: _load(self, key, directory, precision))
            await asyncio.to_thread(_add_chat, served, directory)
        finally:
            del self.loading[key, precision]
        self.entries[key, precision] = served
        meters.LOADS.inc()
        while self.nbytes > self.max_bytes and len(self.entries) > 1:
            old_key, old = self.entries.popitem(last=False)
            # Requests already holding it finish; the weights go with the last of them.
            log.info("model cache: evicting %s (%d bytes)", old_key, old.nbytes)
        return served

    async def adapter(self, served: Served, directory: Path) -> str:
        """Serve the PEFT adapter at `directory` beside `served` (its base; the weights are
        shared, only the adapter's low-rank stacks are added); returns its name for `generate`."""
        key = str(directory)
        if key not in served.adapters:

            def add() -> None:  # on the inference thread, between decode steps
                from models.formats.peft import load_adapter

                bank = served.batcher.decoder.net.adapters
                before = bank.nbytes()
                served.batcher.decoder.add_adapter(key, load_adapter(directory).adapter)
                served.adapters.add(key)
                served.nbytes += bank.nbytes() - before

            await self.run(add)
        return key

    async def generate(
        self,
        served: Served,
        prompt: list[int],
        sampling: Sampling,
        stop: list[str],
        supervised: bool,
        stream: bool,
        ignore_eos: bool = False,
        adapter: str | None = None,
    ) -> AsyncIterator[Update]:
        """Updates for one request: text deltas as they come (stream) or one final update."""
        from models.inference.decoder import Row

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Update] = asyncio.Queue()
        row = Row(prompt, sampling, stop=stop, supervised=supervised, stream=stream, ignore_eos=ignore_eos)
        row.adapter = adapter

        def sink(r: Row, delta: str) -> None:  # on the batcher thread
            try:
                update = Update(delta, r.finish_reason, len(r.tokens), r.error)
                loop.call_soon_threadsafe(queue.put_nowait, update)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is waiting
                r.cancelled = True

        served.batcher.submit(row, sink)
        try:
            while True:
                update = await queue.get()
                yield update
                if update.finish_reason is not None:
                    return
        finally:
            row.cancelled = True  # a no-op once finished; otherwise the row leaves the batch
