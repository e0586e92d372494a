"""Wake-ups over Redis pub/sub, when Redis is configured; without it, readers poll.

Channels: `stagecraft:events:<job id>` (new events were committed; the job's one event
tail in each API process reads them, app/api/fanout.py) and `stagecraft:control:<job id>`
(the job was asked to cancel; its worker checks at once instead of at its next poll).
Messages carry nothing a reader relies on: the database stays the only truth, and a lost
message only delays a reader until its poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)
EVENTS = "stagecraft:events:"
CONTROL = "stagecraft:control:"
REDIS_POLL_S = 2.0


class Publisher:
    def __init__(self, url: str | None):
        self.client = redis.Redis.from_url(url, socket_timeout=2) if url else None

    def publish(self, channel: str, job_id: str) -> None:
        if self.client is None:
            return
        try:
            self.client.publish(channel + job_id, "1")
        except redis.RedisError as exc:  # readers fall back to polling
            log.warning("pub/sub publish failed: %s", exc)


class EventWaiters:
    """One Redis subscription per API process, fanned out to whatever waits on a job: its event
    tail (app/api/fanout.py), which then hands the new events to every stream of the job."""

    def __init__(self, url: str | None, poll_s: float):
        self.url, self.poll_s = url, poll_s
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.url:
            self.task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def register(self, job_id: str) -> asyncio.Event:
        ev = asyncio.Event()
        self.waiters[job_id].add(ev)
        return ev

    def unregister(self, job_id: str, ev: asyncio.Event) -> None:
        s = self.waiters.get(job_id)
        if s is not None:
            s.discard(ev)
            if not s:
                del self.waiters[job_id]

    async def wait(self, ev: asyncio.Event, timeout: float) -> None:
        """Until a wake-up for the job or `timeout`: at most the poll interval without Redis, and at
        most REDIS_POLL_S with it, in case a message was lost."""
        limit = min(timeout, self.poll_s if self.task is None else REDIS_POLL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), limit)
        ev.clear()

    async def _listen(self) -> None:
        while True:
            try:
                async with aioredis.Redis.from_url(str(self.url)) as client, client.pubsub() as ps:
                    await ps.psubscribe(EVENTS + "*")
                    async for msg in ps.listen():
                        if msg.get("type") == "pmessage":
                            job_id = msg["channel"].decode()[len(EVENTS) :]
                            for ev in self.waiters.get(job_id, ()):
                                ev.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted or unreachable: streams poll meanwhile
                log.warning("pub/sub listener: %s; retrying in 1 s", exc)
                self._wake_all()
                await asyncio.sleep(1.0)

    def _wake_all(self) -> None:
        for evs in self.waiters.values():
            for ev in evs:
                ev.set()
