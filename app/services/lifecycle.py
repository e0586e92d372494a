"""The worker side of a job: claim with a lease, renew it, finish, release, and reap jobs
whose worker vanished.

A broker message is only a wake-up and may arrive twice; the database decides. `claim` is
one UPDATE ... WHERE status = 'queued', so exactly one delivery wins and the others drop
out. A worker renews its lease while it trains; when it stops renewing (crash, lost
host), `reap` puts the job back in the queue (or fails it after max_attempts) and sends a
new wake-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services import events
from app.tables import Job, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    owner: str
    attempt: int
    spec: dict[str, Any]

    @property
    def holds(self) -> tuple[ColumnElement[bool]]:
        """The condition that this claim still holds the job's lease."""
        return (Job.lease_owner == self.owner,)


def claim(session: Session, job_id: str, owner: str, lease_s: float) -> Claim | None:
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempt=Job.attempt + 1,
            updated_at=now,
        )
        .returning(Job.tenant_id, Job.attempt, Job.spec, Job.started_at)
    ).first()
    if row is None:
        return None
    if row.started_at is None:
        session.execute(update(Job).where(Job.id == job_id).values(started_at=now))
    return Claim(job_id, row.tenant_id, owner, row.attempt, row.spec)


def renew(session: Session, job_id: str, owner: str, lease_s: float) -> bool:
    """Extend the lease; False when this worker no longer holds it."""
    expires = utcnow() + timedelta(seconds=lease_s)
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(lease_expires_at=expires)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(
    session: Session,
    claim: Claim,
    status: str,
    final_event: dict[str, Any],
    *,
    error: tuple[str, str] | None = None,
    model_id: str | None = None,
) -> bool:
    """End the job with its final event, if this worker still holds it."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
        "model_id": model_id,
        "error_code": error[0] if error else None,
        "error_message": error[1] if error else None,
    }
    return events.append(session, claim.job_id, [final_event], where=claim.holds, values=values) is not None


def release(session: Session, claim: Claim, reason: str) -> bool:
    """Give a running job back to the queue (worker shutting down); the caller re-enqueues it."""
    values = {"status": "queued", "lease_owner": None, "lease_expires_at": None, "enqueued_at": None}
    ev = events.make("job.queued", 0, {"reason": reason})
    return events.append(session, claim.job_id, [ev], where=claim.holds, values=values) is not None


def reap(write: sessionmaker[Session], settings: Settings) -> list[str]:
    """Requeue (or fail, or finish cancelling) jobs whose lease expired, and find queued jobs
    whose wake-up never reached the broker. Returns the job ids to enqueue."""
    now = utcnow()
    to_enqueue = []
    with write() as session:
        expired = session.execute(
            select(Job.id, Job.status, Job.attempt, Job.step).where(
                Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now
            )
        ).all()
        for job_id, status, attempt, step in expired:
            cleared = {"lease_owner": None, "lease_expires_at": None}
            if status == "cancelling":
                values: dict[str, Any] = {"status": "cancelled", "finished_at": now, **cleared}
                ev = events.make("job.cancelled", step, {"reason": "its worker was lost while cancelling"})
            elif attempt >= settings.max_attempts:
                message = f"the worker was lost {attempt} time(s); giving up"
                values = {"status": "failed", "finished_at": now, "error_code": "worker_lost", "error_message": message}
                values.update(cleared)
                ev = events.make("job.failed", step, {"code": "worker_lost", "message": message})
            else:
                values = {"status": "queued", "enqueued_at": None, **cleared}
                ev = events.make("job.queued", step, {"reason": "worker lost", "attempt": attempt})
            # Still as seen, in case another worker's reaper (or the job's own worker) got there first.
            lapsed = (Job.status == status, Job.lease_expires_at < now)
            if events.append(session, job_id, [ev], where=lapsed, values=values) is not None:
                log.warning("job %s: lease expired while %s -> %s", job_id, status, values["status"])
                if values["status"] == "queued":
                    to_enqueue.append(job_id)
        # A new job (attempt 0) may be between its commit and its enqueue in the API: give that
        # a grace period. A job a worker handed back (attempt > 0) waits for this reaper.
        stale = now - timedelta(seconds=max(10.0, settings.lease_s / 2))
        unsent = select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None))
        to_enqueue += session.scalars(unsent.where((Job.attempt > 0) | (Job.updated_at < stale))).all()
        session.commit()
    return to_enqueue
