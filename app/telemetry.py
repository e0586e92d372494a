"""What only workers see (training steps and tokens, step and checkpoint timings, lease losses),
kept where every API process reads it for /metrics, whichever host a worker runs on.

Workers tally increments in memory (`Tally`) and push them every few seconds
(workers/meter.py) to a store:

- with Redis (REDIS_URL, or a Redis broker): one hash, `stagecraft:<queue>:worker-metrics`,
  incremented in a MULTI transaction (HINCRBYFLOAT), so every worker of the deployment adds
  to the same totals and every API process reads the same values;
- without: a SQLite file in the data directory (`worker-metrics.sqlite`), which sees the
  workers that share that directory (`stagecraft up`, one host).

An increment that cannot be pushed stays in the tally for the next push: nothing is lost or
counted twice while the store is down. The API reads the store once per scrape (`read`) and
renders the families (`families`); an unreadable store leaves them out and says so in
`stagecraft_worker_metrics_up`. Counters and histograms are stored as plain fields: a
counter by its name, a histogram as `NAME:sum`, `NAME:count` and `NAME:le:BOUND` (hits of
each finite bucket, not cumulative).
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from app.config import Settings

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# name -> (Prometheus name, help); counters get `_total` appended by prometheus_client
COUNTERS = {
    "train_steps": ("stagecraft_train_steps", "training steps run by workers"),
    "train_tokens": ("stagecraft_train_tokens", "tokens trained on by workers (from each step's rate and time)"),
    "checkpoint_bytes": ("stagecraft_checkpoint_bytes", "bytes of the checkpoints workers wrote"),
    "lease_losses": ("stagecraft_worker_lease_losses", "jobs a worker found taken over (its lease lapsed)"),
}
HISTOGRAMS = {
    "train_step_seconds": ("stagecraft_train_step_seconds", "one training step's time", STEP_BUCKETS),
    "checkpoint_seconds": (
        "stagecraft_checkpoint_seconds",
        "one checkpoint's time: written, stored (uploaded) and registered",
        CHECKPOINT_BUCKETS,
    ),
}


class Tally:
    """Increments not pushed yet. Thread-safe: the training thread adds, a pusher takes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = {}

    def add(self, name: str, amount: float = 1.0) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0.0) + amount

    def observe(self, name: str, value: float) -> None:
        """One observation of histogram `name`."""
        buckets = HISTOGRAMS[name][2]
        i = bisect.bisect_left(buckets, value)
        with self.lock:
            for field, amount in ((f"{name}:sum", value), (f"{name}:count", 1.0)):
                self.values[field] = self.values.get(field, 0.0) + amount
            if i < len(buckets):
                field = f"{name}:le:{buckets[i]}"
                self.values[field] = self.values.get(field, 0.0) + 1.0

    def take(self) -> dict[str, float]:
        with self.lock:
            taken, self.values = self.values, {}
        return taken

    def give_back(self, values: dict[str, float]) -> None:
        """Increments a push failed to store: they go with the next one."""
        with self.lock:
            for name, amount in values.items():
                self.values[name] = self.values.get(name, 0.0) + amount


class Store(Protocol):
    def add(self, increments: dict[str, float]) -> None: ...

    def read(self) -> dict[str, float]: ...


class RedisStore:
    def __init__(self, url: str, key: str):
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key = key

    def add(self, increments: dict[str, float]) -> None:
        with self.client.pipeline(transaction=True) as pipe:  # all of them or none
            for name, amount in increments.items():
                pipe.hincrbyfloat(self.key, name, amount)
            pipe.execute()

    def read(self) -> dict[str, float]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.key)  # type: ignore[assignment]
        return {k.decode(): float(v) for k, v in raw.items()}


class FileStore:
    def __init__(self, path: Path):
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5)
        conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)")
        return conn

    def add(self, increments: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            with conn:  # one transaction
                conn.executemany(
                    "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    list(increments.items()),
                )
        finally:
            conn.close()

    def read(self) -> dict[str, float]:
        if not self.path.is_file():
            return {}
        conn = self._connect()
        try:
            return {name: float(value) for name, value in conn.execute("SELECT name, value FROM counters")}
        finally:
            conn.close()


def store(settings: Settings) -> Store:
    """Redis when the service has it, else the file in the data directory."""
    if settings.pubsub_url:
        return _redis(settings.pubsub_url, f"stagecraft:{settings.queue}:worker-metrics")
    return FileStore(settings.data_dir / "worker-metrics.sqlite")


@lru_cache(maxsize=8)
def _redis(url: str, key: str) -> RedisStore:  # one connection pool per URL
    return RedisStore(url, key)


def read(settings: Settings) -> dict[str, float] | None:
    """The stored totals; None when the store cannot be read (logged)."""
    try:
        return store(settings).read()
    except (redis.RedisError, sqlite3.Error, OSError) as exc:
        log.warning("worker metrics unreadable: %s", exc)
        return None


def families(values: dict[str, float] | None) -> Iterable[Metric]:
    """The worker families in Prometheus' terms (all zero before any push); only the `up`
    gauge when the store was unreadable."""
    up = float(values is not None)
    yield GaugeMetricFamily("stagecraft_worker_metrics_up", "1 if the workers' metrics store was read", up)
    if values is None:
        return
    for name, (prom, doc) in COUNTERS.items():
        yield CounterMetricFamily(prom, doc, value=values.get(name, 0.0))
    for name, (prom, doc, bounds) in HISTOGRAMS.items():
        family = HistogramMetricFamily(prom, doc)
        cumulative, buckets = 0.0, []
        for bound in bounds:
            cumulative += values.get(f"{name}:le:{bound}", 0.0)
            buckets.append((str(bound), cumulative))
        count = values.get(f"{name}:count", 0.0)
        family.add_metric([], [*buckets, ("+Inf", max(count, cumulative))], sum_value=values.get(f"{name}:sum", 0.0))
        yield family
