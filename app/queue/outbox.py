"""Messages that leave only once the transaction that caused them has committed.

A service that queues a job or wakes its readers calls `enqueue(session, job_id)` or
`wake(session, channel, job_id)`; nothing is sent then. When the session commits, the
SQLAlchemy `after_commit` hook below sends them through the `Outbox` bound to the session
(`bind`); a rollback drops them. So a worker never receives a job id whose row it cannot
see yet, and no route has to remember to enqueue.

A session with no outbox bound (a script, a test) sends nothing: a queued job whose
wake-up never left is found and sent by a worker's reaper (`lifecycle.reap`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.queue.broker import Broker
from app.queue.wakeups import Publisher

log = logging.getLogger(__name__)
BOUND = "stagecraft.outbox"  # session.info keys
JOBS = "stagecraft.outbox.jobs"
WAKEUPS = "stagecraft.outbox.wakeups"


@dataclass(frozen=True)
class Outbox:
    broker: Broker | None  # None: wake-ups only (a worker sends no new job messages)
    publisher: Publisher


def bind(session: Session, outbox: Outbox) -> Session:
    session.info[BOUND] = outbox
    return session


def enqueue(session: Session, job_id: str) -> None:
    """Send the job's wake-up to the workers once `session` commits."""
    session.info.setdefault(JOBS, []).append(job_id)


def wake(session: Session, channel: str, job_id: str) -> None:
    """Publish on `channel` + job id (app.queue.wakeups) once `session` commits."""
    session.info.setdefault(WAKEUPS, []).append((channel, job_id))


@event.listens_for(Session, "after_commit")
def _send(session: Session) -> None:
    jobs, wakeups = session.info.pop(JOBS, []), session.info.pop(WAKEUPS, [])
    outbox: Outbox | None = session.info.get(BOUND)
    if outbox is None:
        if jobs:
            log.info("no outbox bound: job(s) %s wait for a reaper to send them", ", ".join(jobs))
        return
    for job_id in jobs:
        if outbox.broker is not None:
            outbox.broker.send(job_id)
    for channel, job_id in wakeups:
        outbox.publisher.publish(channel, job_id)


@event.listens_for(Session, "after_rollback")
def _drop(session: Session) -> None:
    session.info.pop(JOBS, None)
    session.info.pop(WAKEUPS, None)
