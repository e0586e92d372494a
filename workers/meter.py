"""What a worker measures of the jobs it runs, for the API's /metrics (app/telemetry.py):
steps, tokens, step seconds, checkpoint bytes and seconds, lease losses.

`JobMeter` reads a claimed job's events as the pipeline reports them (workers.reporter.JobRun)
and adds to the process's `TALLY`; a thread of the worker process pushes the tally to the
store every PUSH_S seconds, and once more when the worker stops.

A step's time is the time between its `train.step` event and the event before it (event
times are stamped where the pipeline makes them, in milliseconds, so they hold for a run
under torchrun too); an evaluation or a checkpoint in between ends with an event or a
publish of its own, so it is not counted as training. The first step of an attempt that
resumes has no event before it and goes untimed. Tokens are the step's reported rate
(`tokens_per_s`) times that time. A step event with `step_s` or `tokens` of its own is
taken at its word.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from app import telemetry
from app.config import Settings
from app.outage import OutageLog
from models.events import Event

log = logging.getLogger(__name__)
TALLY = telemetry.Tally()
PUSH_S = 2.0
UNTIMED = frozenset({"job.queued", "job.started", "job.restarted"})  # what comes before them is not training


def _seconds(event: Event) -> float | None:
    try:
        return datetime.fromisoformat(event["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class JobMeter:
    """One attempt's measurements (called on the training thread: cheap, no I/O)."""

    def __init__(self, tally: telemetry.Tally = TALLY):
        self.tally = tally
        self.last: float | None = None  # when the previous event of the training was made

    def on_event(self, event: Event) -> None:
        at = _seconds(event)
        if event["type"] == "train.step":
            data = event["data"]
            took = _number(data.get("step_s"))
            if took is None and at is not None and self.last is not None:
                took = max(0.0, at - self.last)
            tokens = _number(data.get("tokens"))
            rate = _number(data.get("tokens_per_s"))
            if tokens is None and rate is not None and took is not None:
                tokens = rate * took
            self.tally.add("train_steps")
            if tokens:
                self.tally.add("train_tokens", tokens)
            if took is not None:
                self.tally.observe("train_step_seconds", took)
        self.last = None if event["type"] in UNTIMED else at

    def checkpoint(self, event: Event, nbytes: int, stored_s: float) -> None:
        """A checkpoint published: `event` its checkpoint.saved (made once it was written),
        `stored_s` the time its upload and registration took after that."""
        at = _seconds(event)
        written_s = at - self.last if at is not None and self.last is not None else 0.0
        self.tally.add("checkpoint_bytes", nbytes)
        self.tally.observe("checkpoint_seconds", max(0.0, written_s) + stored_s)
        self.last = None if at is None else at + stored_s  # the next step starts after the upload


def push(settings: Settings, tally: telemetry.Tally = TALLY) -> bool:
    """Add the tally to the store; on failure it stays for the next push. Whether it was stored."""
    taken = tally.take()
    if not taken:
        return True
    try:
        telemetry.store(settings).add(taken)
        return True
    except Exception:
        tally.give_back(taken)
        raise


def push_forever(settings: Settings) -> None:
    """Every PUSH_S seconds, for the life of the worker process (its `metrics` thread)."""
    outage = OutageLog(log, "the worker metrics store")
    while True:
        time.sleep(PUSH_S)
        try:
            push(settings)
            outage.ok()
        except Exception as exc:
            outage.failed(exc, "pushing worker metrics")


def start(settings: Settings) -> None:
    threading.Thread(target=push_forever, args=(settings,), name="metrics", daemon=True).start()


def push_last(settings: Settings) -> None:
    """The worker stops: what the tally holds, if the store takes it now."""
    try:
        push(settings)
    except Exception as exc:
        log.warning("worker metrics not pushed at shutdown: %s", exc)
