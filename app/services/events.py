"""Job events: rows with a per-job sequence number, which SSE streams tail. Events are
built by models.events.make only; here they are numbered and stored.

After a restart from checkpoint S, what earlier attempts reported after S is marked
`superseded` (the new attempt reports those steps again) in the transaction that stores
`job.restarted`; readers see the final record only. Nothing before S is touched.

Sequence numbers come from `jobs.last_seq`, advanced by the same UPDATE that changes the
job row. That UPDATE locks the row until commit, so a job's events commit in seq order
and a reader that has seen seq N will never later find a smaller one appear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.orm import Session

from app.services import webhooks
from app.tables import Job, JobEvent, utcnow
from models.events import FINAL, Event


def append(
    session: Session,
    job_id: str,
    events: list[Event],
    *,
    where: tuple[ColumnElement[bool], ...] = (),
    values: dict[str, Any] | None = None,
) -> int | None:
    """Number and insert `events`, applying `values` to the job row in the same statement.

    Only if the job row also matches `where` (a worker's lease, say): returns None, and
    writes nothing, when it does not. Otherwise returns the job's newest seq.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, *where)
        .values(last_seq=Job.last_seq + len(events), updated_at=utcnow(), **(values or {}))
    )
    last = session.execute(stmt.returning(Job.last_seq)).scalar_one_or_none()
    if last is None or not events:
        return last
    first = last - len(events) + 1
    rows = [
        {
            "job_id": job_id,
            "seq": first + i,
            "type": e["type"],
            "time": datetime.fromisoformat(e["time"]),
            "stage": e["stage"],
            "step": e["step"],
            "data": e["data"],
        }
        for i, e in enumerate(events)
    ]
    session.execute(insert(JobEvent), rows)
    final = [(first + i, e) for i, e in enumerate(events) if e["type"] in FINAL]
    if final:  # their webhook deliveries commit (or roll back) with them
        webhooks.record(session, job_id, final)
    return last


# What a run reports (a later attempt reports it again); job.* events are the job's history.
RUN_TYPES = ("stage.started", "train.step", "eval", "checkpoint.saved", "stage.completed")


def supersede(session: Session, job_id: str, from_step: int) -> int:
    """Mark what earlier attempts reported after checkpoint `from_step` (0: from the start) as
    superseded. "After" is after that checkpoint's own `checkpoint.saved` event: a stage's
    closing evaluation and the next stage's start share its step. Returns the rows marked."""
    live = (JobEvent.job_id == job_id, JobEvent.superseded.is_(False))
    since = 0
    if from_step > 0:
        saved = select(func.max(JobEvent.seq)).where(
            *live, JobEvent.type == "checkpoint.saved", JobEvent.step == from_step
        )
        found = session.scalar(saved)
        if found is None:  # (not possible for a registered checkpoint) fall back to the steps
            result = session.execute(
                update(JobEvent)
                .where(*live, JobEvent.type.in_(RUN_TYPES), JobEvent.step > from_step)
                .values(superseded=True)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
        since = found
    stmt = update(JobEvent).where(*live, JobEvent.type.in_(RUN_TYPES), JobEvent.seq > since)
    return int(session.execute(stmt.values(superseded=True)).rowcount)  # type: ignore[attr-defined]


def has_run_events(session: Session, job_id: str) -> bool:
    """Whether an attempt has reported anything of a run that is still in the record."""
    live = (JobEvent.job_id == job_id, JobEvent.superseded.is_(False), JobEvent.type.in_(RUN_TYPES))
    return session.scalar(select(JobEvent.seq).where(*live).limit(1)) is not None


def after(session: Session, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    """The job's record after `seq`: superseded reports left out."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq, JobEvent.superseded.is_(False))
    return list(session.scalars(stmt.order_by(JobEvent.seq).limit(limit)))


def tail(session: Session, job_id: str, seq: int, limit: int) -> tuple[list[JobEvent], str | None]:
    """The events after `seq` and the job's status, read in that order: if the job had ended,
    the events include its final one."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return after(session, job_id, seq, limit), status
