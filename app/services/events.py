"""Job events: rows with a per-job sequence number, which SSE streams tail. Events are
built by models.events.make only; here they are numbered and stored.

Sequence numbers come from `jobs.last_seq`, advanced by the same UPDATE that changes the
job row. That UPDATE locks the row until commit, so a job's events commit in seq order
and a reader that has seen seq N will never later find a smaller one appear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.orm import Session

from app.tables import Job, JobEvent, utcnow
from models.events import Event


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
    return last


def after(session: Session, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq).order_by(JobEvent.seq).limit(limit)
    return list(session.scalars(stmt))


def tail(session: Session, job_id: str, seq: int, limit: int) -> tuple[list[JobEvent], str | None]:
    """The events after `seq` and the job's status, read in that order: if the job had ended,
    the events include its final one."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return after(session, job_id, seq, limit), status
