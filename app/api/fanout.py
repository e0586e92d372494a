"""A job's live events fanned out in memory: one database tail per job in this process,
shared by every Server-Sent Events stream of that job.

A stream first reads what it missed from the database itself, page by page as its client
takes them (a resume from `Last-Event-ID`, or a late start). Once it is at the head it
joins the job's `Tail`: one task that reads the new rows once per wake-up
(app.queue.wakeups), renders each event's message once, and appends it to every
subscriber's buffer without ever waiting for one. A subscriber more than `buffer_bytes`
behind (a client that does not read) is dropped: its stream ends, and the client resumes
with `Last-Event-ID` as after any dropped connection, so it loses nothing and slows no one.

The tail keeps its newest messages (`recent_bytes`; from the last `job.restarted` on, since
that event supersedes earlier reports in the database) for streams that join near the head:
those need no query of their own. The database stays the only truth; a message here is a
copy of a committed row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from app.api import shape, sse
from app.db import Database
from app.queue.wakeups import EventWaiters
from app.services import events
from app.tables import FINISHED, JobEvent
from models.events import FINAL

log = logging.getLogger(__name__)
BATCH = 500  # rows per read
BUFFER_BYTES = 1 << 20  # a subscriber this far behind the tail is dropped
RECENT_BYTES = 1 << 20  # the tail's newest messages, kept for streams that join


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    text: str  # the SSE message (app.api.sse)
    final: bool
    restarted: bool


def read(db: Database, job_id: str, after: int, limit: int = BATCH) -> tuple[list[Message], str | None]:
    """The job's first `limit` events after `after` as messages, and its status (read first:
    if it had ended, the events include its final one). Runs in a thread, rendering included."""
    with db.read() as session:
        rows, status = events.tail(session, job_id, after, limit)
    out = [Message(e.seq, _render(e), e.type in FINAL, e.type == "job.restarted") for e in rows]
    return out, status


def _render(e: JobEvent) -> str:
    return sse.message(shape.event(e).model_dump_json(), e.type, e.seq)


def _text(messages: Iterable[Message]) -> str:
    return "".join(m.text for m in messages)


class Subscriber:
    """One stream's buffer: messages the tail handed over that its client has not taken yet."""

    def __init__(self, after: int, limit: int):
        self.last = after  # the newest seq handed over (or already sent)
        self.limit = limit
        self.pending: deque[Message] = deque()
        self.bytes = 0
        self.state = "open"  # open | ended (the job's stream is over) | dropped (too slow)
        self.ready = asyncio.Event()

    def offer(self, messages: list[Message]) -> None:
        new = [m for m in messages if m.seq > self.last]
        if not new or self.state != "open":
            return
        size = sum(len(m.text) for m in new)
        if self.pending and self.bytes + size > self.limit:
            self.drop()
            return
        self.pending.extend(new)
        self.bytes += size
        self.last = new[-1].seq
        self.ready.set()

    def take(self) -> list[Message]:
        out = list(self.pending)
        self.pending.clear()
        self.bytes = 0
        self.ready.clear()
        return out

    def end(self) -> None:
        if self.state == "open":
            self.state = "ended"
        self.ready.set()

    def drop(self) -> None:
        self.state = "dropped"
        self.pending.clear()
        self.bytes = 0
        self.ready.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)


class Tail:
    """The one reader of a job's new events in this process."""

    def __init__(self, fanout: Fanout, job_id: str, after: int):
        self.fanout, self.job_id = fanout, job_id
        self.cursor = after  # the newest seq read
        self.recent: deque[Message] = deque()  # every message with seq in (recent_from, cursor]
        self.recent_from = after
        self.recent_bytes = 0
        self.subscribers: set[Subscriber] = set()
        self.task = asyncio.create_task(self._run(), name=f"sse-tail-{job_id}")

    def covers(self, after: int) -> bool:
        return after >= self.recent_from

    def join(self, sub: Subscriber) -> None:
        """Hand `sub` what it has not seen of the recent messages, then every new one."""
        sub.offer([m for m in self.recent if m.seq > sub.last])
        self.subscribers.add(sub)

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self.close()

    def close(self) -> None:
        self.fanout.forget(self)
        self.task.cancel()

    def _keep(self, messages: list[Message]) -> None:
        for m in messages:
            if m.restarted:  # earlier reports may be superseded now: joiners read them anew
                self.recent.clear()
                self.recent_from, self.recent_bytes = m.seq - 1, 0
            self.recent.append(m)
            self.recent_bytes += len(m.text)
        while self.recent_bytes > self.fanout.recent_bytes and len(self.recent) > 1:
            old = self.recent.popleft()
            self.recent_bytes -= len(old.text)
            self.recent_from = old.seq

    def _publish(self, messages: list[Message]) -> None:
        self.cursor = messages[-1].seq
        self._keep(messages)
        for sub in list(self.subscribers):
            sub.offer(messages)
            if sub.state == "dropped":
                self.subscribers.discard(sub)

    def _end(self) -> None:
        for sub in self.subscribers:
            sub.end()
        self.fanout.forget(self)

    async def _run(self) -> None:
        waiters = self.fanout.waiters
        try:
            while True:
                wake = waiters.register(self.job_id)
                try:
                    messages, status = await run_in_threadpool(read, self.fanout.db, self.job_id, self.cursor)
                    if messages:
                        self._publish(messages)
                    if (messages and messages[-1].final) or (not messages and (status is None or status in FINISHED)):
                        self._end()
                        return
                    if len(messages) < BATCH:
                        await waiters.wait(wake, math.inf)
                finally:
                    waiters.unregister(self.job_id, wake)
        except asyncio.CancelledError:
            raise
        except Exception:  # (the database is away, say) the streams end; their clients resume
            log.exception("event tail of job %s", self.job_id)
            self._end()


class Fanout:
    """The tails of this process, by job id."""

    def __init__(
        self, db: Database, waiters: EventWaiters, buffer_bytes: int = BUFFER_BYTES, recent_bytes: int = RECENT_BYTES
    ):
        self.db, self.waiters = db, waiters
        self.buffer_bytes, self.recent_bytes = buffer_bytes, recent_bytes
        self.tails: dict[str, Tail] = {}

    def forget(self, tail: Tail) -> None:
        if self.tails.get(tail.job_id) is tail:
            del self.tails[tail.job_id]

    async def stream(self, job_id: str, after: int, keepalive_s: float) -> AsyncIterator[str]:
        """The job's SSE stream after seq `after`, until its final event (docs/api.md)."""
        yield sse.RETRY
        sent_at = time.monotonic()
        at_head = moved = False  # the last page read was the database's last; it had rows
        while True:
            tail = self.tails.get(job_id)
            if tail is not None and (tail.covers(after) or (at_head and not moved)):
                break  # (not covered: only superseded rows lie between, nothing to send)
            if tail is None and at_head:
                tail = self.tails[job_id] = Tail(self, job_id, after)
                break
            limit = BATCH if tail is None else min(BATCH, tail.recent_from - after)  # (only the gap)
            messages, status = await run_in_threadpool(read, self.db, job_id, after, limit)
            if messages:
                yield _text(messages)
                sent_at, after = time.monotonic(), messages[-1].seq
                if messages[-1].final:
                    return
            at_head, moved = len(messages) < limit, bool(messages)
            if at_head and (status is None or status in FINISHED):
                return
        sub = Subscriber(after, self.buffer_bytes)
        tail.join(sub)
        try:
            while True:
                if sub.pending:
                    taken = sub.take()
                    yield _text(taken)
                    sent_at = time.monotonic()
                    if taken[-1].final:
                        return
                    continue
                if sub.state != "open":
                    return
                quiet = keepalive_s - (time.monotonic() - sent_at)
                if quiet <= 0:
                    yield sse.KEEPALIVE
                    sent_at = time.monotonic()
                    continue
                await sub.wait(quiet)
        finally:
            tail.leave(sub)
