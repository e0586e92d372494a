"""Prometheus metrics of serving (app/serving/engine.py): decode steps and rows, requests by
how they finished, their latency and time to first token, tokens generated, and the model
cache (bytes held, loads).

A request's clock starts when it is handed to its model's batcher (`submitted`, on the event
loop) and is read on the inference thread: its first token when a decode step first leaves
it with one (`stepped`), its end when it finishes (`finished`).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from models.inference.decoder import Decoder, Row

STEPS = Counter("stagecraft_inference_decode_steps_total", "batched decode steps (one token for every active row)")
ROWS = Counter("stagecraft_inference_decoded_rows_total", "rows decoded by those steps: rows/steps = mean batch")
REQUESTS = Counter("stagecraft_inference_requests_total", "generation requests finished", ["finish_reason"])
LATENCY = Histogram(
    "stagecraft_inference_request_seconds",
    "a generation request's time, from its model's queue to its last token",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
FIRST_TOKEN = Histogram(
    "stagecraft_inference_time_to_first_token_seconds",
    "a generation request's time from its model's queue to its first generated token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS = Counter("stagecraft_inference_tokens_total", "tokens generated (requests' completion tokens)")
PROMPT_TOKENS = Counter("stagecraft_inference_prompt_tokens_total", "prompt tokens of the requests finished")
LOADS = Counter("stagecraft_inference_model_loads_total", "models loaded into the serving cache")
CACHE_BYTES = Gauge("stagecraft_inference_model_cache_bytes", "bytes the serving cache holds (weights, KV caches)")

_lock = threading.Lock()
_clocks: weakref.WeakKeyDictionary[Row, list[float]] = weakref.WeakKeyDictionary()  # [submitted, first token or 0]


def submitted(row: Row) -> None:
    with _lock:
        _clocks[row] = [time.perf_counter(), 0.0]


def stepped(decoder: Decoder, steps: int, rows: int) -> None:
    """After a decode step (`steps`, `rows`: the decoder's counts before it)."""
    STEPS.inc(decoder.steps - steps)
    ROWS.inc(decoder.rows_decoded - rows)
    now = time.perf_counter()
    with _lock:
        for row in decoder.rows:
            clock = _clocks.get(row)
            if clock is not None and not clock[1] and row.tokens:
                clock[1] = now
                FIRST_TOKEN.observe(now - clock[0])


def finished(row: Row) -> None:
    REQUESTS.labels(row.finish_reason).inc()
    TOKENS.inc(len(row.tokens))
    PROMPT_TOKENS.inc(len(row.prompt))
    now = time.perf_counter()
    with _lock:
        clock = _clocks.pop(row, None)
    if clock is None:
        return
    if not clock[1] and row.tokens:  # its first step was also its last
        FIRST_TOKEN.observe(now - clock[0])
    LATENCY.observe(now - clock[0])


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


_caches: weakref.WeakSet[_Sized] = weakref.WeakSet()


def watch(cache: _Sized) -> None:
    """Count `cache.nbytes` in CACHE_BYTES for as long as the cache lives (one per API app)."""
    _caches.add(cache)


CACHE_BYTES.set_function(lambda: float(sum(c.nbytes for c in list(_caches))))
