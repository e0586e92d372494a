"""/v1/jobs: validate, create, list, get, cancel. Events, metrics and checkpoints: events.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import Connection, Row
from sqlalchemy.orm import Session

from app.api import shape
from app.api.body import PARSED, ParsedJsonRoute
from app.api.deps import DatabaseDep, IdempotencyKey, PageDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.errors import parse_json
from app.api.openapi import ERRORS, SPEC_BODY, SPEC_ERRORS, error
from app.api.schemas import DeletedJob, JobOut, Page, ValidationOut
from app.config import Settings
from app.db import AUTOCOMMIT_POOL_SIZE
from app.queue import routing
from app.services import deletion, jobs, lifecycle
from app.tables import Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS, route_class=ParsedJsonRoute)
POLL_THREADS = AUTOCOMMIT_POOL_SIZE  # a connection each


async def json_body(request: Request) -> Any:
    """The body app.api.body parsed off the event loop (bounded in size and depth)."""
    if PARSED in request.scope:
        return request.scope[PARSED]
    return parse_json(await request.body())


JsonBody = Annotated[Any, Depends(json_body)]


@router.post("/validate", openapi_extra=SPEC_BODY, responses=SPEC_ERRORS)
def validate_job(body: JsonBody, tenant_id: TenantDep, session: ReadSession, settings: SettingsDep) -> ValidationOut:
    """Dry run: every check `POST /v1/jobs` makes, and resource estimates; nothing is stored."""
    _, est = jobs.validate(session, settings, tenant_id, body)
    return ValidationOut(estimates=shape.estimate(est))


@router.post("", status_code=201, openapi_extra=SPEC_BODY, responses=SPEC_ERRORS)
def create_job(
    body: JsonBody,
    response: Response,
    tenant_id: TenantDep,
    session: WriteSession,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Validate the spec, store the job and queue it. With an Idempotency-Key already used
    for the same spec, the job made then is returned (header `Idempotent-Replayed: true`)."""
    job, created = jobs.submit(session, settings, tenant_id, body, idempotency_key)
    session.commit()  # the job's wake-up leaves now (app.queue.outbox)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return shape.job(job, _waiting(session, settings, [job]).get(job.id))


@router.get("")
def list_jobs(
    tenant_id: TenantDep,
    session: ReadSession,
    settings: SettingsDep,
    page: PageDep,
    status: JobStatus | None = None,
) -> Page[JobOut]:
    """Newest first."""
    rows, more = jobs.list_page(session, tenant_id, status, page.limit, page.after)
    waiting = _waiting(session, settings, rows)
    return shape.page([shape.job(j, waiting.get(j.id)) for j in rows], more, rows[-1].id if rows else None)


def _waiting(db: Session | Connection, settings: Settings, rows: Sequence[Job | Row[Any]]) -> dict[str, str]:
    """Why each queued job among `rows` waits, where no running worker can take it (app.queue.routing)."""
    queued = [j for j in rows if j.status == "queued"]
    if not queued:
        return {}
    live = routing.live_queues(db)
    found = {j.id: routing.waiting_reason(live, settings.queue, j.spec) for j in queued}
    return {k: v for k, v in found.items() if v is not None}


_polls: RunVar[anyio.CapacityLimiter] = RunVar("stagecraft_job_polls")  # one per event loop, as anyio's own


def poll_limiter() -> anyio.CapacityLimiter:
    """The few threads GET /v1/jobs/{id} reads on (made on first use in each event loop).

    On anyio's shared 40-thread pool, 200 concurrent polls kept 40 reads contending for the
    GIL at once, finishing in no useful order: under `benchmarks/get_job_load.py` (2 API
    workers, 200 back-to-back clients) p99 was 7x p50. With 8 threads of its own the route
    took ~2.5x less p99 and as many or more requests/s (benchmarks/RESULTS.md)."""
    try:
        return _polls.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(POLL_THREADS)
        _polls.set(limiter)
        return limiter


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, tenant_id: TenantDep, db: DatabaseDep, settings: SettingsDep) -> Response:
    """The most polled route: one statement in autocommit (no BEGIN / ROLLBACK round trips),
    no ORM object, serialized once (the model built here is not validated again), on one of a
    few threads of its own."""

    def read() -> str:
        with db.autocommit.connect() as conn:
            row = jobs.record(conn, tenant_id, job_id)
            waiting = _waiting(conn, settings, [row]).get(row.id)
        return shape.job(row, waiting).model_dump_json()

    return Response(await anyio.to_thread.run_sync(read, limiter=poll_limiter()), media_type="application/json")


@router.post("/{job_id}/cancel", responses={409: error("`job_finished`: the job already ended")})
def cancel_job(job_id: str, tenant_id: TenantDep, session: WriteSession) -> JobOut:
    """A queued job is cancelled at once; a running one becomes `cancelling` and its worker
    stops at the next step boundary (keeping a checkpoint), then `cancelled`."""
    job = lifecycle.cancel(session, tenant_id, job_id)
    session.commit()  # its worker and its event streams are woken now
    return shape.job(job)


JOB_IN_USE = "`job_active`: the job has not ended (cancel it first); `in_use`: an unfinished job starts from it"


@router.delete("/{job_id}", responses={409: error(JOB_IN_USE)})
def delete_job(job_id: str, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep) -> DeletedJob:
    """Delete a finished job with everything it made: events, metrics, checkpoints, its model
    and their files. A queued or running job must be cancelled first (409 `job_active`)."""
    paths = deletion.delete_job(session, settings, tenant_id, job_id)
    session.commit()
    deletion.remove(settings, paths)
    return DeletedJob(id=job_id)
