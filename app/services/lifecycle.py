"""Every change of a job's state, and nothing else. Routes and workers call these; neither
writes job state itself.

    create ──> queued ──claim──> running ──finish──> succeeded | failed | cancelled
                 ▲  │               │  ▲
                 │  │ cancel        │  └── renew (the lease), report (events, progress)
                 │  ▼               │ cancel
                 │ cancelled        ▼
                 │              cancelling ──finish / reap──> cancelled
                 └── release (the worker stops) / reap (its lease expired; failed at max_attempts)

Each transition is one conditional UPDATE whose WHERE is the state it starts from (and,
for a worker, that it still holds the lease), applied together with the transition's
event (app.services.events.append). So the API, workers and reapers never race: of two
claims of one job, one finds nothing to update. A broker message is only a wake-up that
may arrive twice; the database decides. Wake-ups leave after commit (app.queue.outbox).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import logs
from app.config import Settings
from app.errors import Conflict, NotFound
from app.queue import outbox
from app.queue.wakeups import CONTROL, EVENTS
from app.services import events, quotas
from app.tables import FINISHED, Checkpoint, Job, JobEvent, JobStatus, Metric, new_id, utcnow
from models.events import Event, make

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    owner: str
    attempt: int
    spec: dict[str, Any]
    request_id: str | None = None  # of the request that created the job (its first event), for the logs

    @property
    def holds(self) -> tuple[ColumnElement[bool]]:
        """The condition that this claim still holds the job's lease."""
        return (Job.lease_owner == self.owner,)


def _lease(lease_s: float) -> dict[str, Any]:
    return {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}


_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}


# --- the API side ------------------------------------------------------------------------


def create(
    session: Session, tenant_id: str, name: str, spec: dict[str, Any], estimates: dict[str, Any],
    total_steps: int, idempotency_key: str | None,
) -> tuple[Job, bool]:  # fmt: skip
    """A new queued job, sent to the workers once the caller commits; or the job this
    idempotency key already made (409 if that was for another spec). Returns (job, created)."""
    if idempotency_key:
        existing = _by_key(session, tenant_id, idempotency_key, spec)
        if existing is not None:
            return existing, False
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=name,
        status="queued",
        spec=spec,
        estimates=estimates,
        total_steps=total_steps,
        idempotency_key=idempotency_key or None,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # a concurrent request with the same key won
        existing = _by_key(session, tenant_id, str(idempotency_key), spec)
        if existing is None:
            raise
        return existing, False
    queued = {"total_steps": total_steps, "request_id": logs.current("request_id")}  # (app/logs.py)
    events.append(session, job.id, [make("job.queued", 0, {k: v for k, v in queued.items() if v is not None})])
    outbox.enqueue(session, job.id)
    outbox.wake(session, EVENTS, job.id)
    return job, True


def _by_key(session: Session, tenant_id: str, key: str, spec: dict[str, Any]) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.spec != spec:
        raise Conflict("this Idempotency-Key was already used with a different spec", code="idempotency_key_reused")
    return job


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Queued: cancelled now. Running: cancelling until its worker stops at the next step
    (it is woken at once over pub/sub). Cancelling: unchanged. Finished: 409."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job '{job_id}'")
    now = utcnow()
    was_queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .returning(Job.id)
    ).first()
    if was_queued:
        events.append(session, job_id, [make("job.cancelled", job.step, {"reason": "cancelled while queued"})])
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(status="cancelling", cancel_requested=True, updated_at=now)
        )
    session.refresh(job)
    if job.status in FINISHED and not was_queued:
        raise Conflict(f"job '{job_id}' already finished ({job.status})", code="job_finished")
    outbox.wake(session, CONTROL, job_id)
    outbox.wake(session, EVENTS, job_id)
    return job


# --- the worker side ---------------------------------------------------------------------


@dataclass(frozen=True)
class TenantBusy:
    """A claim refused: the job's tenant runs `running` jobs, its most (tenant_max_running_jobs)."""

    running: int


def claim(session: Session, job_id: str, owner: str, lease_s: float, max_running: int = 0) -> Claim | TenantBusy | None:
    """Take a queued job with a lease; None when this delivery lost (taken, finished, unknown);
    TenantBusy (the job stays queued) when its tenant already runs `max_running` jobs (0: no limit)."""
    running = quotas.running_slot(session, job_id, max_running)
    if running is not None:
        return TenantBusy(running)
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="running", lease_owner=owner, attempt=Job.attempt + 1, updated_at=now, **_lease(lease_s))
        .returning(Job.tenant_id, Job.attempt, Job.spec, Job.started_at)
    ).first()
    if row is None:
        return None
    if row.started_at is None:
        session.execute(update(Job).where(Job.id == job_id).values(started_at=now))
    first = session.scalar(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.seq == 1))
    return Claim(job_id, row.tenant_id, owner, row.attempt, row.spec, (first or {}).get("request_id"))


def reset_progress(session: Session, job_id: str) -> None:
    """A fresh attempt (nothing to resume from): its metrics and checkpoint rows start over."""
    session.execute(delete(Metric).where(Metric.job_id == job_id))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))


def renew(session: Session, claim: Claim, lease_s: float) -> bool:
    """Extend the lease; False when this worker no longer holds it."""
    result = session.execute(update(Job).where(Job.id == claim.job_id, *claim.holds).values(**_lease(lease_s)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def report(session: Session, claim: Claim, batch: list[Event], lease_s: float) -> bool:
    """Append a batch of the run's events, move the job's step and stage to the newest of
    them and renew the lease; False (nothing written) when the lease is lost."""
    values: dict[str, Any] = {"step": batch[-1]["step"], **_lease(lease_s)}
    stage = next((e["stage"] for e in reversed(batch) if e["stage"] is not None), None)
    if stage is not None:
        values.update(stage_index=stage["index"], stage_name=stage["name"])
    restarts = [e for e in batch if e["type"] == "job.restarted"]
    if restarts and not renew(session, claim, lease_s):  # lock the row (and check the lease) first
        return False
    for e in restarts:  # before the batch is stored: only earlier attempts' rows are superseded
        restart(session, claim.job_id, int(e["data"]["from_step"]))
    return events.append(session, claim.job_id, batch, where=claim.holds, values=values) is not None


def restart(session: Session, job_id: str, from_step: int) -> None:
    """An attempt resumes from checkpoint `from_step` (0: from the start): what earlier attempts
    reported after it is superseded, and their checkpoints past it are no longer the job's."""
    events.supersede(session, job_id, from_step)
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step > from_step))


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(
    session: Session,
    claim: Claim,
    status: JobStatus,
    final_event: Event,
    *,
    error: tuple[str, str] | None = None,
    model_id: str | None = None,
) -> bool:
    """End the job with its final event, if this worker still holds it."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "model_id": model_id,
        "error_code": error[0] if error else None,
        "error_message": error[1] if error else None,
        **_NO_LEASE,
    }
    return events.append(session, claim.job_id, [final_event], where=claim.holds, values=values) is not None


def release(session: Session, claim: Claim, reason: str) -> bool:
    """Give a running job back to the queue (its worker is stopping). No message is sent: this
    worker would take it again; the reaper of another worker, or of the next to start, does.
    A hand-back is not a loss: it does not count toward max_attempts."""
    values = {"status": "queued", "enqueued_at": None, **_NO_LEASE}
    ev = make("job.queued", 0, {"reason": reason})
    return events.append(session, claim.job_id, [ev], where=claim.holds, values=values) is not None


def reap(session: Session, settings: Settings) -> list[str]:
    """Requeue (or fail at max_attempts losses, or finish cancelling) jobs whose lease expired,
    and send, once the caller commits, queued jobs whose wake-up never reached the broker or
    that no worker claimed within `resend_unclaimed_s` of it (the broker may have lost the
    message; a duplicate finds nothing to claim). Returns the ids of the jobs sent."""
    now = utcnow()
    to_send = []
    expired = session.execute(
        select(Job.id, Job.status, Job.attempt, Job.losses, Job.step).where(
            Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now
        )
    ).all()
    for job_id, status, attempt, losses, step in expired:
        values: dict[str, Any]
        if status == "cancelling":
            values = {"status": "cancelled", "finished_at": now, **_NO_LEASE}
            ev = make("job.cancelled", step, {"reason": "its worker was lost while cancelling"})
        elif losses + 1 >= settings.max_attempts:
            message = f"the worker was lost {losses + 1} time(s); giving up"
            values = {"status": "failed", "finished_at": now, "error_code": "worker_lost", "error_message": message}
            values.update(_NO_LEASE, losses=losses + 1)
            ev = make("job.failed", step, {"code": "worker_lost", "message": message})
        else:
            values = {"status": "queued", "enqueued_at": None, "losses": losses + 1, **_NO_LEASE}
            ev = make("job.queued", step, {"reason": "worker lost", "attempt": attempt, "losses": losses + 1})
        # Still as seen, in case another worker's reaper (or the job's own worker) got there first.
        lapsed = (Job.status == status, Job.lease_expires_at < now)
        if events.append(session, job_id, [ev], where=lapsed, values=values) is not None:
            log.warning("job %s: lease expired while %s -> %s", job_id, status, values["status"])
            if values["status"] == "queued":
                to_send.append(job_id)
    # A new job (attempt 0) may be between its commit and its enqueue in the API: give that
    # a grace period. A job a worker handed back (attempt > 0) waits for this reaper.
    stale = now - timedelta(seconds=max(10.0, settings.lease_s / 2))
    unsent = select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None))
    to_send += session.scalars(unsent.where((Job.attempt > 0) | (Job.updated_at < stale))).all()
    unclaimed = now - timedelta(seconds=settings.resend_unclaimed_s)
    to_send += session.scalars(select(Job.id).where(Job.status == "queued", Job.enqueued_at < unclaimed)).all()
    for job_id in to_send:
        outbox.enqueue(session, job_id)
    return to_send
