"""The SSE fan-out (app/api/fanout.py) over the `database` fixture (SQLite, then PostgreSQL),
driven directly: its streams are the route's bodies. One tail per job whatever the number of
streams; each stream gets every event once, in order, in the wire format of docs/api.md,
from the start or from its Last-Event-ID; a stream too far behind is dropped and resumes;
quiet streams get keep-alives; a finished job's stream closes at once; what a restart
supersedes is not handed to streams that join after it. Without Redis: the tail polls."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

from app.api import shape
from app.api.fanout import Fanout
from app.db import Database
from app.queue.wakeups import EventWaiters
from app.services import auth, events, lifecycle
from models.events import make

POLL_S = 0.02
STAGE = {"index": 0, "name": "pre"}


class Job:
    """A claimed job whose events the test reports, as a worker would."""

    def __init__(self, db: Database):
        name = f"fan-{secrets.token_hex(4)}"
        with db.write() as session:
            tenant = auth.get_or_create_tenant(session, name).id
            job, _ = lifecycle.create(session, tenant, "fan", {"name": "fan"}, {}, 1000, None)
            claim = lifecycle.claim(session, job.id, "test", 600)
            session.commit()
        assert isinstance(claim, lifecycle.Claim)
        self.db, self.claim, self.id, self.step = db, claim, job.id, 0

    def report(self, n: int, kind: str = "train.step", **data: Any) -> None:
        batch = []
        for _ in range(n):
            self.step += 1
            batch.append(make(kind, self.step, {"loss": 1.0, **data}, STAGE))  # type: ignore[arg-type]
        with self.db.write() as session:
            assert lifecycle.report(session, self.claim, batch, 600)
            session.commit()

    def finish(self) -> None:
        with self.db.write() as session:
            assert lifecycle.finish(session, self.claim, "succeeded", make("job.succeeded", self.step, {}))
            session.commit()

    def wire(self, after: int = 0) -> str:
        """The job's record after `after`, framed by hand as docs/api.md says."""
        with self.db.read() as session:
            rows = events.after(session, self.id, after, 10_000)
            return "".join(f"id: {e.seq}\nevent: {e.type}\ndata: {shape.event(e).model_dump_json()}\n\n" for e in rows)


async def drain(stream: AsyncIterator[str], timeout: float = 30) -> str:
    async def read() -> str:
        return "".join([chunk async for chunk in stream])

    return await asyncio.wait_for(read(), timeout)


async def next_chunk(stream: AsyncIterator[str]) -> str:
    return await asyncio.wait_for(stream.__anext__(), 30)


def seqs(text: str) -> list[int]:
    return [int(line[4:]) for line in text.split("\n") if line.startswith("id: ")]


def fanout(db: Database, **limits: int) -> Fanout:
    return Fanout(db, EventWaiters(None, POLL_S), **limits)


def test_streams_of_a_job_share_one_tail_and_each_get_every_event(database: Database) -> None:
    job = Job(database)
    job.report(5)

    async def scenario() -> tuple[list[str], int]:
        fan = fanout(database)
        starts = [0, 3, 6, 0, 2] * 4  # from the start, and resumes from Last-Event-ID
        streams = [fan.stream(job.id, s, 60.0) for s in starts]
        tasks = [asyncio.create_task(drain(s)) for s in streams]
        while sum(len(t.subscribers) for t in fan.tails.values()) < len(streams):
            await asyncio.sleep(0.01)
        shared = len(fan.tails)
        for _ in range(10):
            await asyncio.to_thread(job.report, 3)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(job.finish)
        texts = await asyncio.gather(*tasks)
        assert fan.tails == {}  # the tail ended with the job
        return [f"{s}|{t}" for s, t in zip(starts, texts, strict=True)], shared

    got, shared = asyncio.run(scenario())
    assert shared == 1
    for entry in got:
        start, text = entry.split("|", 1)
        assert text == "retry: 1000\n\n" + job.wire(int(start)), start
        assert seqs(text)[-1] == 37 and text.rstrip().split("\n")[-2] == "event: job.succeeded"


def test_a_stream_too_far_behind_is_dropped_and_resumes(database: Database) -> None:
    job = Job(database)

    async def scenario() -> tuple[str, str, str, int]:
        fan = fanout(database, buffer_bytes=4000)
        slow, fast = fan.stream(job.id, 0, 60.0), fan.stream(job.id, 0, 60.0)
        fast_task = asyncio.create_task(drain(fast))
        got = await next_chunk(slow) + await next_chunk(slow)  # retry, then job.queued (its own read)
        live = asyncio.create_task(next_chunk(slow))  # it joins the tail and waits
        await asyncio.sleep(POLL_S * 3)
        await asyncio.to_thread(job.report, 3, note="x" * 300)
        got += await live  # a subscriber now, that reads no more
        for _ in range(10):  # ~1.5 kB a batch; the slow stream takes none of them
            await asyncio.to_thread(job.report, 3, note="x" * 300)
            await asyncio.sleep(POLL_S * 3)
        await asyncio.to_thread(job.finish)
        fast_text = await fast_task  # the fast one was not held up
        rest = await drain(slow)  # the slow one: what it had been handed, then the end
        last = seqs(got + rest)[-1]
        resumed = await drain(fan.stream(job.id, last, 60.0))
        return got + rest, fast_text, resumed, last

    slow_text, fast_text, resumed, last = asyncio.run(scenario())
    assert fast_text == "retry: 1000\n\n" + job.wire()
    assert last < 35 and "job.succeeded" not in slow_text  # dropped before the end
    assert seqs(slow_text) == list(range(1, last + 1))
    assert resumed == "retry: 1000\n\n" + job.wire(last)  # nothing lost, nothing repeated


def test_quiet_streams_get_keep_alives_and_an_ended_job_closes_at_once(database: Database) -> None:
    job = Job(database)

    async def scenario() -> tuple[list[str], str, str]:
        fan = fanout(database)
        stream = fan.stream(job.id, 1, 0.1)
        quiet = [await next_chunk(stream) for _ in range(3)]
        await stream.aclose()
        assert fan.tails == {}  # its last stream gone, the tail stops
        await asyncio.to_thread(job.finish)
        return quiet, await drain(fan.stream(job.id, 2, 0.1)), await drain(fan.stream(job.id, 0, 0.1))

    quiet, after_end, whole = asyncio.run(scenario())
    assert quiet == ["retry: 1000\n\n", ": keep-alive\n\n", ": keep-alive\n\n"]
    assert after_end == "retry: 1000\n\n"  # ended, nothing after seq 2: closed at once
    assert whole == "retry: 1000\n\n" + job.wire()


def test_streams_joining_after_a_restart_get_the_record_without_what_it_superseded(database: Database) -> None:
    job = Job(database)

    async def scenario() -> tuple[str, str, str]:
        fan = fanout(database)
        early = asyncio.create_task(drain(fan.stream(job.id, 0, 60.0)))
        await asyncio.sleep(POLL_S * 3)
        await asyncio.to_thread(job.report, 6)  # steps 1-6 (seqs 2-7)
        await asyncio.sleep(POLL_S * 5)
        job.step = 3  # the worker died; the next attempt resumes from step 3
        with database.write() as session:
            restarted = make("job.restarted", 3, {"from_step": 3, "checkpoint": "step-3"})
            assert lifecycle.report(session, job.claim, [restarted], 600)
            session.commit()
        await asyncio.to_thread(job.report, 3)  # steps 4-6 again
        await asyncio.sleep(POLL_S * 5)
        late = await next_chunk(late_stream := fan.stream(job.id, 0, 60.0))
        late_task = asyncio.create_task(drain(late_stream))
        await asyncio.sleep(POLL_S * 3)
        await asyncio.to_thread(job.finish)
        return await early, late + await late_task, job.wire()

    early, late, record = asyncio.run(scenario())
    assert late == "retry: 1000\n\n" + record  # steps 4-6 once: the superseded ones left out
    assert seqs(early) == list(range(1, 13))  # the live stream saw them as they came, as before
