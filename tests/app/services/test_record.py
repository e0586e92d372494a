"""A job's record after restarts (SQLite and PostgreSQL): what earlier attempts reported after
the checkpoint a later attempt resumes from is superseded, nothing before it; hand-backs do
not count toward max_attempts; a sent job nobody claimed is sent again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.config import Settings
from app.db import Database
from app.services import events, lifecycle
from app.tables import Job, utcnow
from models.events import Event, make

STAGE = {"index": 0, "name": "pretrain"}


def claim(database: Database, job_id: str, owner: str) -> lifecycle.Claim:
    with database.write() as session:
        found = lifecycle.claim(session, job_id, owner, 30.0)
        session.commit()
    assert found is not None
    return found


def report(database: Database, c: lifecycle.Claim, batch: list[Event]) -> None:
    with database.write() as session:
        assert lifecycle.report(session, c, batch, 30.0)
        session.commit()


def expire(database: Database, job_id: str) -> None:
    with database.write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()


def reap(database: Database, settings: Settings) -> list[str]:
    with database.write() as session:
        sent = lifecycle.reap(session, settings)
        session.commit()
    return sent


def record(database: Database, job_id: str) -> list[tuple[str, int]]:
    with database.read() as session:
        return [(e.type, e.step) for e in events.after(session, job_id, 0, 1000)]


def steps(first: int, last: int) -> list[Event]:
    return [make("train.step", s, {"loss": 1.0}, STAGE) for s in range(first, last + 1)]


def test_a_resume_supersedes_what_came_after_its_checkpoint_only(
    database: Database, settings: Settings, new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    one = claim(database, job_id, "w1")
    saved = make("checkpoint.saved", 2, {"path": "x"}, STAGE)
    report(database, one, [make("stage.started", 0, {}, STAGE), *steps(1, 2), saved, *steps(3, 4)])
    expire(database, job_id)
    reap(database, settings)
    two = claim(database, job_id, "w2")
    restarted = make("job.restarted", 2, {"from_step": 2, "checkpoint": "step-000000002"})
    report(database, two, [make("job.started", 0, {"attempt": 2}), restarted, *steps(3, 5)])
    got = record(database, job_id)
    train = [s for t, s in got if t == "train.step"]
    assert train == [1, 2, 3, 4, 5]
    assert [t for t, _ in got].count("stage.started") == 1 and ("checkpoint.saved", 2) in got
    assert [t for t, _ in got if t.startswith("job.")] == ["job.queued", "job.queued", "job.started", "job.restarted"]


def test_a_restart_from_nothing_supersedes_every_earlier_report(
    database: Database, settings: Settings, new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    one = claim(database, job_id, "w1")
    report(database, one, [make("stage.started", 0, {}, STAGE), *steps(1, 3)])
    with database.read() as session:
        assert events.has_run_events(session, job_id)
    expire(database, job_id)
    reap(database, settings)
    two = claim(database, job_id, "w2")
    report(database, two, [make("job.restarted", 0, {"from_step": 0}), make("stage.started", 0, {}, STAGE)])
    report(database, two, steps(1, 2))
    assert [s for t, s in record(database, job_id) if t == "train.step"] == [1, 2]


def test_hand_backs_do_not_count_toward_max_attempts(
    database: Database, settings: Settings, new_job: Callable[..., str], job_of: Any
) -> None:
    """max_attempts is 2 here: three hand-backs and one loss leave the job queued."""
    job_id = new_job()
    for i in range(3):
        c = claim(database, job_id, f"w{i}")
        with database.write() as session:
            assert lifecycle.release(session, c, "the worker shut down")
            session.commit()
    claim(database, job_id, "w9")
    expire(database, job_id)
    assert job_id in reap(database, settings)
    job = job_of(job_id)
    assert (job.status, job.attempt, job.losses) == ("queued", 4, 1)
    claim(database, job_id, "w10")
    expire(database, job_id)
    reap(database, settings)
    assert (job_of(job_id).status, job_of(job_id).error_code) == ("failed", "worker_lost")


def test_a_sent_job_nobody_claimed_is_sent_again(
    database: Database, settings: Settings, new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    with database.write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
        session.commit()
    assert job_id not in reap(database, settings)  # just sent: a worker may take it yet
    with database.write() as session:
        late = utcnow() - timedelta(seconds=settings.resend_unclaimed_s + 1)
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=late))
        session.commit()
    assert job_id in reap(database, settings)  # its message may be lost with the broker
