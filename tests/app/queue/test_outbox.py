"""app.queue.outbox: a job's wake-up and its pub/sub messages leave when the transaction
commits, never before and never after a rollback. A real broker (Redis, a queue of this
test's own) and real Redis pub/sub."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.db import Database
from app.queue import outbox
from app.queue.broker import Broker
from app.queue.wakeups import EVENTS, Publisher
from app.services import lifecycle

REDIS = os.environ.get("STAGECRAFT_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture
def sender(database: Database, tmp_path: Path) -> Outbox:
    settings = Settings(data_dir=tmp_path, broker_url=f"{REDIS}/14", queue=f"test-outbox-{secrets.token_hex(4)}")
    return outbox.Outbox(Broker(settings, database.write), Publisher(REDIS))


Outbox = outbox.Outbox


@pytest.fixture
def channel() -> Iterator[redis.client.PubSub]:
    ps = redis.Redis.from_url(REDIS).pubsub(ignore_subscribe_messages=True)
    ps.psubscribe(EVENTS + "*")
    yield ps
    ps.close()


def queued(sender: Outbox) -> int:
    """Messages waiting in the broker's queue (kombu keeps a Redis queue as a list of that name)."""
    assert sender.broker is not None
    settings = sender.broker.settings
    return int(redis.Redis.from_url(settings.broker).llen(settings.queue))


def wakeups(ps: redis.client.PubSub, job_id: str) -> int:
    n = 0
    while (msg := ps.get_message(timeout=0.5)) is not None:
        n += msg["channel"].decode().endswith(job_id)
    return n


def test_sent_after_commit_and_dropped_on_rollback(
    database: Database, tenant: str, sender: Outbox, channel: redis.client.PubSub
) -> None:
    with database.write() as session:
        outbox.bind(session, sender)
        job, _ = lifecycle.create(session, tenant, "job", {"name": "job"}, {}, 1, None)
        session.flush()
        assert queued(sender) == 0 and wakeups(channel, job.id) == 0  # not before the commit
        session.commit()
    assert queued(sender) == 1
    assert wakeups(channel, job.id) == 1
    with database.read() as session:
        assert session.get_one(type(job), job.id).enqueued_at is not None  # the broker has it

    with database.write() as session:
        outbox.bind(session, sender)
        other, _ = lifecycle.create(session, tenant, "job", {"name": "job"}, {}, 1, None)
        session.rollback()
    assert queued(sender) == 1 and wakeups(channel, other.id) == 0
    assert sender.broker is not None
    redis.Redis.from_url(sender.broker.settings.broker).delete(sender.broker.settings.queue)
