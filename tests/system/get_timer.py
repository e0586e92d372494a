"""Timed GETs from a process of their own, so that what the test process itself does (reading
hundreds of streams) never shows up as the server's latency. Imports httpx only: the
spawned process starts in well under a second."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import httpx

PAUSE_S = 0.02  # between two requests


def _run(url: str, key: str, paths: list[str], stop: Event, out: Queue[Any]) -> None:
    latencies: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        client.get(paths[0])  # a warm connection
        out.put(("ready",))
        for path in itertools.cycle(paths):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            r = client.get(path)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                out.put(("error", f"GET {path}: {r.status_code} {r.text[:300]}"))
                return
            time.sleep(PAUSE_S)
    out.put(("ok", latencies))


@contextmanager
def timed_gets(url: str, key: str, paths: list[str]) -> Iterator[list[float]]:
    """GETs of `paths` in turn, one at a time, for as long as the block runs: the list
    yielded holds their latencies (seconds) once the block has ended."""
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_run, args=(url, key, paths, stop, out), daemon=True)
    proc.start()
    try:
        first = out.get(timeout=60)
        assert first == ("ready",), first
        latencies: list[float] = []
        yield latencies
        stop.set()
        kind, found = out.get(timeout=180)
        assert kind == "ok", found
        latencies.extend(found)
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
