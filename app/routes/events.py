"""A job's events (JSON pages, or a live Server-Sent Events stream), metrics, checkpoints and
evaluation report."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.db import Database
from app.deps import JobDep, ReadSession
from app.notify import EventWaiters
from app.routes import ERRORS
from app.schemas import CheckpointOut, EvaluationOut, EventOut, MetricsOut, Page
from app.services import evaluation, events, metrics
from app.tables import FINISHED, Job, JobEvent

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"], responses=ERRORS)
SSE_BATCH = 500

EVENTS_DOC = {
    "content": {
        "application/json": {},
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": 'id: 7\nevent: train.step\ndata: {"seq": 7, "type": "train.step", ...}\n\n',
        },
    },
    "description": "a page of events; with `Accept: text/event-stream`, a stream of every event after "
    "`Last-Event-ID` (or `after`), `id` = seq, `event` = type, `data` = the event JSON; the server "
    "closes it after the final event (job.succeeded, job.failed or job.cancelled)",
}


def _read(db: Database, job_id: str, after: int) -> tuple[list[JobEvent], str | None]:
    with db.read() as session:
        # Status first: if the job had ended, the events read next include its final one.
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return events.after(session, job_id, after, SSE_BATCH), status


def _sse(e: JobEvent) -> str:
    return f"id: {e.seq}\nevent: {e.type}\ndata: {events.to_out(e).model_dump_json()}\n\n"


async def stream(
    db: Database, waiters: EventWaiters, job_id: str, after: int, keepalive_s: float
) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    sent_at = time.monotonic()
    while True:
        wake = waiters.register(job_id)
        try:
            rows, status = await run_in_threadpool(_read, db, job_id, after)
            for e in rows:
                yield _sse(e)
                after = e.seq
                if e.type in events.FINAL:
                    return
            if rows:
                sent_at = time.monotonic()
                continue
            if status is None or status in FINISHED:
                return
            await waiters.wait(wake, keepalive_s - (time.monotonic() - sent_at))
            if time.monotonic() - sent_at >= keepalive_s:
                yield ": keep-alive\n\n"
                sent_at = time.monotonic()
        finally:
            waiters.unregister(job_id, wake)


@router.get("/events", response_model=Page[EventOut], responses={200: EVENTS_DOC})
async def job_events(
    request: Request,
    job: JobDep,
    after: Annotated[int, Query(ge=0, description="only events with a larger seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="JSON pages only")] = 100,
    accept: Annotated[str, Header(include_in_schema=False)] = "",
    last_event_id: Annotated[str | None, Header(description="SSE: resume after this seq")] = None,
) -> Page[EventOut] | StreamingResponse:
    db: Database = request.app.state.db
    if last_event_id and last_event_id.strip().isdigit():
        after = max(after, int(last_event_id))
    if "text/event-stream" in accept:
        keepalive = request.app.state.settings.sse_keepalive_s
        return StreamingResponse(
            stream(db, request.app.state.waiters, job.id, after, keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def page() -> Page[EventOut]:
        with db.read() as session:
            rows = events.after(session, job.id, after, limit + 1)
        data = [events.to_out(e) for e in rows[:limit]]
        more = len(rows) > limit
        return Page(data=data, has_more=more, next_cursor=str(data[-1].seq) if data else None)

    return await run_in_threadpool(page)


@router.get("/metrics")
def job_metrics(job: JobDep, session: ReadSession) -> MetricsOut:
    """Series `train.loss`, `train.lr`, `train.grad_norm`, `train.tokens_per_s` and
    `eval.<data>.<metric>`, each as [[step, value], ...] in step order."""
    return MetricsOut(series=metrics.series(session, job.id))


@router.get("/checkpoints")
def job_checkpoints(job: JobDep, session: ReadSession) -> list[CheckpointOut]:
    """The checkpoints kept on disk (the spec's keep_last), oldest first."""
    return metrics.checkpoints(session, job.id)


@router.get("/evaluation")
def job_evaluation(job: JobDep, session: ReadSession) -> EvaluationOut:
    """Validation loss and task metrics (BLEU, chrF, ROUGE-L, exact match, F1, as the spec
    asks) at the end of each stage and for the final model, every measurement, and a few
    sample generations. Grows while the job runs."""
    return evaluation.report(session, job)
