"""workers/liveness.py: when a worker's reaper decides it has stopped consuming (and exits for
its supervisor to start a fresh one). Against the `database` fixture, SQLite alone: the query
is plain SQL and the subject is the decision."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import Database
from app.services import auth, lifecycle
from app.tables import Job, utcnow
from workers.liveness import Activity, not_consuming

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
IDLE_EXIT_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waiting_job(database: Database, name: str, *, age_s: float, sent: bool = True) -> str:
    """A queued job (a spec named `name`) last changed `age_s` ago, its message sent or not."""
    with database.write() as session:
        tenant = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        job, _ = lifecycle.create(session, tenant, name, {"name": name}, {}, 10, None)
        then = utcnow() - timedelta(seconds=age_s)
        session.flush()
        session.execute(update(Job).where(Job.id == job.id).values(updated_at=then, enqueued_at=then if sent else None))
        session.commit()
        return job.id


def test_a_worker_idle_for_an_instant_while_old_jobs_wait_is_consuming(database: Database) -> None:
    """The failure of CI run 26: the reaper had just sent stale jobs again and ran nothing at
    that instant; the worker took them a few milliseconds later."""
    name, clock = f"stale-{secrets.token_hex(4)}", Clock()
    waiting_job(database, name, age_s=3600)
    activity = Activity(clock)
    with activity.running():
        clock.now += 500  # a long task
    clock.now += 0.01  # the instant between two tasks

    def check() -> bool:
        with database.read() as session:
            return not_consuming(session, activity, IDLE_EXIT_S, lambda spec: spec.get("name") == name)

    assert not check()
    clock.now += IDLE_EXIT_S  # no task for a minute while that job still waits: nothing is arriving
    assert check()
    with activity.running():  # a task running, however long
        clock.now += 10 * IDLE_EXIT_S
        assert not check()


@pytest.mark.parametrize(
    "age_s, sent, can_take, expected",
    [
        (3600, True, True, True),
        (10, True, True, False),  # sent a moment ago: not waiting long
        (3600, False, True, False),  # never reached the broker: the reaper sends it, no worker missed it
        (3600, True, False, False),  # for another kind of worker (its resources)
    ],
)
def test_only_a_job_this_worker_could_have_taken_long_ago_counts(
    database: Database, age_s: float, sent: bool, can_take: bool, expected: bool
) -> None:
    name, clock = f"job-{secrets.token_hex(4)}", Clock()
    waiting_job(database, name, age_s=age_s, sent=sent)
    activity = Activity(clock)
    clock.now += 2 * IDLE_EXIT_S
    with database.read() as session:
        got = not_consuming(session, activity, IDLE_EXIT_S, lambda spec: can_take and spec.get("name") == name)
    assert got is expected
