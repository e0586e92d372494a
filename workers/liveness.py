"""Whether a worker still consumes from the broker.

A broker restart can leave Celery connected to nothing: the worker looks alive and takes no
message. The worker's reaper thread (workers.celery_app) asks `not_consuming` each tick and
exits for its supervisor to start a fresh worker when the answer is yes: no task started or
ended on this worker for `idle_exit_s` while a job it could take has waited, queued with its
message sent, as long. The reaper sends a waiting job's message again every
`resend_unclaimed_s` (shorter), so a consuming worker takes a task well within `idle_exit_s`.

Both conditions are needed. A worker between two tasks of a backlog is idle for an instant
while old jobs wait, and the reaper's own resend of stale jobs is read on the same tick,
before any worker can have taken them: that instant is not "not consuming".
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import Job, utcnow


class Activity:
    """Whether this worker runs a task, and for how long it has run none (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._since = clock()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._since = self._clock()

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self._running else self._clock() - self._since


def not_consuming(
    session: Session, activity: Activity, idle_exit_s: float, can_take: Callable[[dict[str, Any]], bool]
) -> bool:
    """Idle for `idle_exit_s` while a job this worker can take (`can_take(spec)`) has been
    queued, its message sent, at least as long."""
    if activity.idle_for() <= idle_exit_s:
        return False
    since = utcnow() - timedelta(seconds=idle_exit_s)
    stmt = select(Job.spec).where(Job.status == "queued", Job.enqueued_at.is_not(None), Job.updated_at < since)
    return any(can_take(spec) for spec in session.scalars(stmt.limit(100)))
