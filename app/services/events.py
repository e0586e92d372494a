"""Job events: rows with a per-job sequence number, which SSE streams tail.

Sequence numbers come from `jobs.last_seq`, advanced by the same UPDATE that changes the
job row. That UPDATE locks the row until commit, so a job's events commit in seq order
and a reader that has seen seq N will never later find a smaller one appear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.orm import Session

from app.schemas import EventOut
from app.tables import Job, JobEvent, utcnow

FINAL = frozenset({"job.succeeded", "job.failed", "job.cancelled"})


def make(type_: str, step: int = 0, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job-level event (no stage) in the pipeline's event shape."""
    return {"type": type_, "time": utcnow().isoformat(), "stage": None, "step": step, "data": data or {}}


def append(
    session: Session,
    job_id: str,
    events: list[dict[str, Any]],
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
            "stage": e.get("stage"),
            "step": e.get("step", 0),
            "data": e.get("data") or {},
        }
        for i, e in enumerate(events)
    ]
    session.execute(insert(JobEvent), rows)
    return last


def after(session: Session, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq).order_by(JobEvent.seq).limit(limit)
    return list(session.scalars(stmt))


def to_out(e: JobEvent) -> EventOut:
    return EventOut.model_validate(e, from_attributes=True)
