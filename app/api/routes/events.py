"""A job's events (JSON pages, or a live Server-Sent Events stream), metrics (and their
charts, PNG or SVG), checkpoints and evaluation report."""

from __future__ import annotations

from typing import Annotated

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api import shape, sse
from app.api.deps import DatabaseDep, JobDep, ReadSession, SettingsDep
from app.api.fanout import Fanout
from app.api.openapi import ERRORS, EVENT_STREAM
from app.api.schemas import CheckpointOut, EvaluationOut, EventOut, MetricsOut, Page
from app.errors import Invalid
from app.services import evaluation, events, metrics, plots
from app.tables import Job

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"], responses=ERRORS)
MAX_SEQ = 2**63 - 1  # seqs are BIGINT: a larger cursor cannot be compared in SQL


def fanout(request: Request) -> Fanout:
    """This process's tails of live job events (app/api/fanout.py), made on first use."""
    state = request.app.state
    found: Fanout | None = getattr(state, "fanout", None)
    if found is None:
        found = state.fanout = Fanout(state.db, state.waiters)
    return found


@router.get("/events", response_model=Page[EventOut], responses=EVENT_STREAM)
async def job_events(
    request: Request,
    job: JobDep,
    db: DatabaseDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="only events with a larger seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="JSON pages only")] = 100,
    accept: Annotated[str, Header(include_in_schema=False)] = "",
    last_event_id: Annotated[str | None, Header(description="SSE: resume after this seq")] = None,
) -> Page[EventOut] | StreamingResponse:
    if last_event_id and last_event_id.strip().isdigit():
        if int(last_event_id) > MAX_SEQ:
            message = f"Last-Event-ID must be an event seq (at most {MAX_SEQ})"
            raise Invalid(message, [{"loc": "header.last-event-id", "message": message}])
        after = max(after, int(last_event_id))
    if "text/event-stream" in accept:
        return StreamingResponse(
            fanout(request).stream(job.id, after, settings.sse_keepalive_s),
            media_type="text/event-stream",
            headers=sse.HEADERS,
        )

    def page() -> Page[EventOut]:
        with db.read() as session:
            rows = events.after(session, job.id, after, limit + 1)
        data = [shape.event(e) for e in rows[:limit]]
        more = len(rows) > limit
        return Page(data=data, has_more=more, next_cursor=str(data[-1].seq) if data else None)

    return await run_in_threadpool(page)


@router.get("/metrics")
def job_metrics(job: JobDep, session: ReadSession) -> MetricsOut:
    """Series `train.loss`, `train.lr`, `train.grad_norm`, `train.tokens_per_s` and
    `eval.<data>.<metric>`, each as [[step, value], ...] in step order."""
    return MetricsOut(series=metrics.series(session, job.id))


_charts: RunVar[anyio.CapacityLimiter] = RunVar("stagecraft_charts")  # one per event loop


async def chart(job: Job, db: DatabaseDep, fmt: plots.Format) -> Response:
    """The job's series drawn per stage (app/services/plots.py), on a thread: one at a time
    per event loop, so charts never hold more than one of the API's threads."""
    try:
        limiter = _charts.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _charts.set(limiter)

    def draw() -> bytes:
        with db.read() as session:
            series = metrics.series(session, job.id)
        return plots.render(series, plots.stage_spans(job.spec), fmt, f"{job.name} ({job.id})")

    image = await anyio.to_thread.run_sync(draw, limiter=limiter)
    return Response(image, media_type=plots.MEDIA_TYPES[fmt], headers={"Cache-Control": "no-store"})


def _image(media: str) -> dict[int | str, dict[str, object]]:
    return {200: {"content": {media: {}}, "description": "the chart (grows while the job runs)"}}


@router.get("/metrics.png", response_class=Response, responses=_image("image/png"))
async def job_metrics_png(job: JobDep, db: DatabaseDep) -> Response:
    """The loss, learning rate and evaluation metrics drawn against the step, one panel each,
    stages shaded and their boundaries marked (PNG)."""
    return await chart(job, db, "png")


@router.get("/metrics.svg", response_class=Response, responses=_image("image/svg+xml"))
async def job_metrics_svg(job: JobDep, db: DatabaseDep) -> Response:
    """The same chart as metrics.png, as SVG (each series a line with the id `series-<name>`)."""
    return await chart(job, db, "svg")


@router.get("/checkpoints")
def job_checkpoints(job: JobDep, session: ReadSession) -> list[CheckpointOut]:
    """The checkpoints kept on disk (the spec's keep_last), oldest first."""
    return [shape.checkpoint(c) for c in metrics.checkpoints(session, job.id)]


@router.get("/evaluation")
def job_evaluation(job: JobDep, session: ReadSession) -> EvaluationOut:
    """Validation loss and task metrics (BLEU, chrF, ROUGE-L, exact match, F1, as the spec
    asks) at the end of each stage and for the final model, every measurement, and a few
    sample generations. Grows while the job runs."""
    return shape.evaluation_report(evaluation.report(session, job))
