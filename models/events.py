"""The event: one typed shape and one constructor for everything a job reports.

The pipeline, the command line's `events.jsonl` and the service all build events with
`make`, so every event has the same keys and the same time format (UTC, milliseconds,
`Z`). Consumers add `seq` (docs/api.md, the events route: `{seq, type, time, stage, step, data}`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

EventType = Literal[
    "job.queued",
    "job.started",
    "job.restarted",
    "stage.started",
    "train.step",
    "eval",
    "checkpoint.saved",
    "stage.completed",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
]
FINAL: frozenset[str] = frozenset({"job.succeeded", "job.failed", "job.cancelled"})  # a job's last event


class StageRef(TypedDict):
    index: int
    name: str


class Event(TypedDict):
    type: str
    time: str
    stage: StageRef | None
    step: int
    data: dict[str, Any]


def timestamp(at: datetime | None = None) -> str:
    """The event time format: `2026-05-01T12:00:00.123Z`."""
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make(type_: EventType, step: int = 0, data: dict[str, Any] | None = None, stage: StageRef | None = None) -> Event:
    """An event stamped now; `stage` is None for job-level events."""
    return {"type": type_, "time": timestamp(), "stage": stage, "step": step, "data": data or {}}
