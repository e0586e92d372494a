"""The jobs table summed up for /metrics, at scrape time, in two aggregate queries: jobs by
status with their lease losses and, for jobs that ran and finished, a histogram of their
run time (started to finished) by outcome; and queued jobs by the queue they wait in
(app.queue.routing, read off the specs' `resources` in SQL).

The table is the truth, so every API process answers alike, wherever the workers run. Jobs
deleted leave these sums (Prometheus takes a drop in a histogram for a reset)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Float, case, cast, func, select
from sqlalchemy.orm import Session

from app.queue import routing
from app.tables import FINISHED, STATUSES, Job

DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 24 * 3600.0, 72 * 3600.0)


@dataclass
class Durations:
    """A histogram: cumulative counts at each of DURATION_BUCKETS, the count and the sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total_s: float = 0.0


@dataclass
class JobStats:
    by_status: dict[str, int]
    lease_losses: int  # lapsed leases recorded on the jobs in the table
    durations: dict[str, Durations]  # by outcome (succeeded, failed, cancelled): jobs that ran
    queued: dict[str, int]  # queue -> jobs waiting in it


def _duration(session: Session) -> ColumnElement[float]:
    """finished_at - started_at in seconds; NULL unless the job ran and finished."""
    if session.get_bind().dialect.name == "sqlite":  # datetimes are text there
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(func.extract("epoch", Job.finished_at - Job.started_at), Float)


def collect(session: Session, base_queue: str) -> JobStats:
    seconds = _duration(session)
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    rows = session.execute(
        select(
            Job.status,
            func.count(),
            func.sum(Job.losses),
            func.count(seconds),
            func.sum(seconds),
            *buckets,
        ).group_by(Job.status)
    ).all()
    by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
    durations: dict[str, Durations] = {outcome: Durations() for outcome in FINISHED}
    losses = 0
    for status, n, lost, ran, total, *cumulative in rows:
        by_status[status] = int(n)
        losses += int(lost or 0)
        if status in durations:
            durations[status] = Durations([int(c or 0) for c in cumulative], int(ran), float(total or 0.0))
    return JobStats(by_status, losses, durations, _queued(session, base_queue))


def _queued(session: Session, base_queue: str) -> dict[str, int]:
    resources = select(
        Job.spec[("resources", "device")].as_string().label("device"),
        Job.spec[("resources", "processes")].as_integer().label("processes"),
        Job.spec["device"].as_string().label("legacy"),  # specs stored before `resources`
    ).where(Job.status == "queued")
    sub = resources.subquery()
    grouped = select(sub.c.device, sub.c.processes, sub.c.legacy, func.count()).group_by(
        sub.c.device, sub.c.processes, sub.c.legacy
    )
    depth = {base_queue: 0}
    for device, processes, legacy, n in session.execute(grouped):
        spec = {"resources": {"device": device, "processes": processes}, "device": legacy}
        queue = routing.job_queue(base_queue, spec)
        depth[queue] = depth.get(queue, 0) + int(n)
    return depth
