"""app.services.lifecycle against SQLite and PostgreSQL: every transition, and the races the
conditional UPDATEs exist for (two claims, two creates with one idempotency key)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from app import db as app_db
from app.config import Settings
from app.db import Database
from app.errors import Conflict, NotFound
from app.services import auth, events, lifecycle
from app.tables import Job, JobEvent
from models.events import make


def in_parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """fn(0..n-1) on n threads released together; their results in order (or the exception)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def claim(database: Database, job_id: str, owner: str = "w1", lease_s: float = 30.0) -> lifecycle.Claim | None:
    with database.write() as session:
        found = lifecycle.claim(session, job_id, owner, lease_s)
        session.commit()
    return found


def event_types(database: Database, job_id: str) -> list[str]:
    with database.read() as session:
        return [e.type for e in events.after(session, job_id, 0, 1000)]


def test_create_is_queued_with_its_event(database: Database, new_job: Callable[..., str], job_of: Any) -> None:
    job_id = new_job()
    job = job_of(job_id)
    assert (job.status, job.attempt, job.last_seq) == ("queued", 0, 1)
    assert event_types(database, job_id) == ["job.queued"]


def test_two_claims_one_winner(database: Database, new_job: Callable[..., str], job_of: Any) -> None:
    job_id = new_job()
    won = in_parallel(4, lambda i: claim(database, job_id, f"w{i}"))
    claims = [c for c in won if c is not None]
    assert len(claims) == 1, won
    job = job_of(job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("running", 1, claims[0].owner)
    assert job.started_at is not None
    assert claim(database, job_id, "late") is None  # a duplicate delivery finds nothing to claim


def expire(database: Database, job_id: str) -> None:
    """Make the job's lease lapse (its worker stopped renewing it)."""
    with database.write() as session:
        job = session.get_one(Job, job_id)
        assert job.lease_expires_at is not None
        job.lease_expires_at = job.lease_expires_at.replace(year=2000)
        session.commit()


def reap(database: Database, settings: Settings) -> list[str]:
    with database.write() as session:
        sent = lifecycle.reap(session, settings)
        session.commit()
    return sent


def test_reap_requeues_an_expired_lease_then_fails_at_max_attempts(
    database: Database, settings: Settings, new_job: Callable[..., str], job_of: Any
) -> None:
    job_id = new_job()
    first = claim(database, job_id, "w1")
    assert first is not None
    assert job_id not in reap(database, settings)  # the lease holds: nothing to do
    expire(database, job_id)
    assert job_id in reap(database, settings)  # requeued, and its wake-up is to be sent
    job = job_of(job_id)
    assert (job.status, job.lease_owner, job.enqueued_at) == ("queued", None, None)
    with database.write() as session:  # the lost worker's late report changes nothing
        assert not lifecycle.report(session, first, [make("train.step", 3, {"loss": 1.0})], 30.0)
        session.rollback()
    second = claim(database, job_id, "w2")
    assert second is not None and second.attempt == 2
    expire(database, job_id)
    assert job_id not in reap(database, settings)  # attempt 2 of max_attempts 2: failed
    job = job_of(job_id)
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert job.finished_at is not None
    assert event_types(database, job_id) == ["job.queued", "job.queued", "job.failed"]


def test_reap_finishes_a_cancel_whose_worker_was_lost(
    database: Database, settings: Settings, tenant: str, new_job: Callable[..., str], job_of: Any
) -> None:
    job_id = new_job()
    assert claim(database, job_id) is not None
    with database.write() as session:
        lifecycle.cancel(session, tenant, job_id)
        session.commit()
    expire(database, job_id)
    reap(database, settings)
    assert job_of(job_id).status == "cancelled"
    assert event_types(database, job_id)[-1] == "job.cancelled"


def cancel(database: Database, tenant: str, job_id: str) -> Job:
    with database.write() as session:
        job = lifecycle.cancel(session, tenant, job_id)
        session.commit()
    return job


def test_cancel_from_each_state(database: Database, tenant: str, new_job: Callable[..., str], job_of: Any) -> None:
    queued = new_job()
    assert cancel(database, tenant, queued).status == "cancelled"
    assert event_types(database, queued) == ["job.queued", "job.cancelled"]
    with pytest.raises(Conflict) as finished:
        cancel(database, tenant, queued)
    assert finished.value.code == "job_finished"

    running = new_job()
    c = claim(database, running)
    assert c is not None
    job = cancel(database, tenant, running)
    assert (job.status, job.cancel_requested) == ("cancelling", True)
    with database.read() as session:
        assert lifecycle.cancel_requested(session, running)
    assert cancel(database, tenant, running).status == "cancelling"  # asking twice changes nothing
    with database.write() as session:  # the worker stops at its next step
        assert lifecycle.finish(session, c, "cancelled", make("job.cancelled", 0, {"reason": "cancelled by request"}))
        session.commit()
    assert job_of(running).status == "cancelled"

    for status in ("succeeded", "failed"):
        job_id = new_job()
        c = claim(database, job_id)
        assert c is not None
        with database.write() as session:
            assert lifecycle.finish(session, c, status, make(f"job.{status}", 10, {}))  # type: ignore[arg-type]
            session.commit()
        with pytest.raises(Conflict):
            cancel(database, tenant, job_id)
        assert job_of(job_id).status == status

    with pytest.raises(NotFound):
        cancel(database, "tenant_of_someone_else", new_job())


def test_release_hands_the_job_back_for_the_reaper_to_send(
    database: Database, settings: Settings, new_job: Callable[..., str], job_of: Any
) -> None:
    job_id = new_job()
    c = claim(database, job_id)
    assert c is not None
    with database.write() as session:
        assert lifecycle.renew(session, c, 30.0)
        assert lifecycle.release(session, c, "the worker shut down")
        session.commit()
    job = job_of(job_id)
    assert (job.status, job.lease_owner) == ("queued", None)
    with database.write() as session:  # released: the old claim holds nothing any more
        assert not lifecycle.renew(session, c, 30.0)
        session.rollback()
    assert job_id in reap(database, settings)  # attempt > 0 and never sent: the reaper sends it


def test_a_fresh_attempt_resets_progress(database: Database, settings: Settings, new_job: Callable[..., str]) -> None:
    from app.services import metrics

    job_id = new_job()
    c = claim(database, job_id)
    assert c is not None
    with database.write() as session:
        batch = [make("train.step", 1, {"loss": 2.0, "lr": 0.1}), make("train.step", 2, {"loss": 1.5, "lr": 0.1})]
        metrics.record(session, settings, job_id, batch, {})
        assert lifecycle.report(session, c, batch, 30.0)
        session.commit()
    with database.read() as session:
        assert metrics.series(session, job_id)["train.loss"] == [(1, 2.0), (2, 1.5)]
        assert session.get_one(Job, job_id).step == 2
    with database.write() as session:
        lifecycle.reset_progress(session, job_id)
        session.commit()
    with database.read() as session:
        assert metrics.series(session, job_id) == {}


def test_the_idempotency_race_makes_one_job(database: Database, tenant: str) -> None:
    spec = {"name": "same"}

    def create(i: int) -> tuple[str, bool]:
        with database.write() as session:
            job, created = lifecycle.create(session, tenant, "same", spec, {}, 10, "key-1")
            session.commit()
            return job.id, created

    results = in_parallel(4, create)
    assert all(isinstance(r, tuple) for r in results), results
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with database.read() as session:
        rows = session.scalars(select(Job).where(Job.tenant_id == tenant)).all()
        assert len(rows) == 1
        assert [e.type for e in events.after(session, rows[0].id, 0, 10)] == ["job.queued"]
    with database.write() as session, pytest.raises(Conflict) as other_spec:
        lifecycle.create(session, tenant, "other", {"name": "other"}, {}, 10, "key-1")
    assert other_spec.value.code == "idempotency_key_reused"


def test_sequence_numbers_under_concurrent_appends(database: Database, new_job: Callable[..., str]) -> None:
    job_id = new_job()  # seq 1: job.queued
    writers, batches, size = 4, 5, 3

    def append(i: int) -> list[int]:
        lasts = []
        for b in range(batches):
            batch = [make("train.step", i * 100 + b * size + k, {"writer": i}) for k in range(size)]
            with database.write() as session:
                last = events.append(session, job_id, batch)
                session.commit()
            assert last is not None
            lasts.append(last)
            time.sleep(0)
        return lasts

    results = in_parallel(writers, append)
    assert all(isinstance(r, list) for r in results), results
    with database.read() as session:
        rows = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        last_seq = session.get_one(Job, job_id).last_seq
    total = 1 + writers * batches * size
    assert [e.seq for e in rows] == list(range(1, total + 1)) and last_seq == total
    for first in range(2, total + 1, size):  # each batch got consecutive numbers, in its order
        batch = rows[first - 1 : first - 1 + size]
        assert len({e.data["writer"] for e in batch}) == 1
        assert [e.step for e in batch] == sorted(e.step for e in batch)


def claim_limited(database: Database, job_id: str, limit: int, owner: str = "w1") -> Any:
    with database.write() as session:
        found = lifecycle.claim(session, job_id, owner, 30.0, max_running=limit)
        session.commit()
    return found


def other_tenant_job(database: Database) -> str:
    with database.write() as session:
        other = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        job, _ = lifecycle.create(session, other, "job", {"name": "job"}, {}, 10, None)
        session.commit()
        return job.id


def test_claim_leaves_a_job_queued_while_its_tenant_runs_its_most(
    database: Database, new_job: Callable[..., str], job_of: Any
) -> None:
    """tenant_max_running_jobs at claim time: the tenant's second job waits (still queued,
    attempt 0, touched), another tenant's job starts meanwhile, and the waiting job starts
    once the first ends. A cancelling job still counts (it holds its worker)."""
    first, second = new_job(), new_job()
    started = claim_limited(database, first, 1)
    assert isinstance(started, lifecycle.Claim)
    before = job_of(second).updated_at
    busy = claim_limited(database, second, 1, "w2")
    assert busy == lifecycle.TenantBusy(running=1)
    waiting = job_of(second)
    assert (waiting.status, waiting.attempt, waiting.lease_owner) == ("queued", 0, None)
    assert waiting.updated_at >= before
    assert isinstance(claim_limited(database, other_tenant_job(database), 1, "w3"), lifecycle.Claim)
    assert isinstance(claim_limited(database, second, 2, "w2"), lifecycle.Claim)  # a higher limit: it starts
    # back to one running: cancel the first (cancelling still counts), then finish it
    third = new_job()
    with database.write() as session:
        lifecycle.cancel(session, started.tenant_id, first)
        session.commit()
    assert claim_limited(database, third, 2) == lifecycle.TenantBusy(running=2)
    with database.write() as session:
        assert lifecycle.finish(session, started, "cancelled", make("job.cancelled", 0, {"reason": "test"}))
        session.commit()
    assert isinstance(claim_limited(database, third, 2), lifecycle.Claim)
    assert claim_limited(database, third, 2) is None  # a duplicate delivery still finds nothing


def test_concurrent_claims_never_pass_the_running_limit(database: Database, new_job: Callable[..., str]) -> None:
    """Six workers claim six of one tenant's jobs at once with a limit of two: two start (the
    tenant row serializes the claims on PostgreSQL; SQLite's write lock does there)."""
    job_ids = [new_job() for _ in range(6)]
    results = in_parallel(6, lambda i: claim_limited(database, job_ids[i], 2, f"w{i}"))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(isinstance(r, lifecycle.Claim) for r in results) == 2, results
    assert sum(isinstance(r, lifecycle.TenantBusy) for r in results) == 4, results


def test_a_session_stalled_inside_a_transaction_does_not_block_the_reaper(
    database: Database, settings: Settings, new_job: Callable[..., str], job_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped (SIGSTOP) while its transaction holds the job's row lock: PostgreSQL ends
    that session after IDLE_IN_TRANSACTION_S, so another worker's reaper can requeue the job."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's idle_in_transaction_session_timeout")
    monkeypatch.setattr(app_db, "IDLE_IN_TRANSACTION_S", 1)
    stalled_db = Database(database.engine.url.render_as_string(hide_password=False))
    job_id = new_job()
    assert claim(database, job_id, "w1") is not None
    expire(database, job_id)
    stalled = stalled_db.write()
    stalled.execute(update(Job).where(Job.id == job_id).values(step=Job.step))  # row locked, never committed
    done: list[list[str]] = []
    reaper = threading.Thread(target=lambda: done.append(reap(database, settings)), daemon=True)
    reaper.start()
    reaper.join(timeout=20)
    assert done and job_id in done[0], "the reaper stayed blocked behind the stalled transaction"
    assert job_of(job_id).status == "queued"
    with pytest.raises(DBAPIError):  # woken, the stalled worker finds its session ended
        stalled.execute(update(Job).where(Job.id == job_id).values(step=Job.step))
    stalled.close()
    stalled_db.dispose()
