"""/v1/jobs: validate, create, list, get, cancel. Events, metrics and checkpoints: events.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from app.broker import enqueue
from app.deps import DatabaseDep, JobDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.errors import parse_json
from app.notify import CONTROL, EVENTS
from app.routes import ERRORS, error
from app.schemas import JobOut, Page, ValidationOut
from app.services import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)

SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        "description": "the job spec (CONTRACT §1); dataset fields hold dataset ids",
    }
}
SPEC_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error("`invalid_json`: the body is not JSON (line and column named)"),
    422: error("`invalid_spec`: details list every error as {loc, message}, loc a dotted field path"),
}
Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


async def json_body(request: Request) -> Any:
    return parse_json(await request.body())


JsonBody = Annotated[Any, Depends(json_body)]


@router.post("/validate", openapi_extra=SPEC_BODY, responses=SPEC_ERRORS)
def validate_job(body: JsonBody, tenant_id: TenantDep, session: ReadSession, settings: SettingsDep) -> ValidationOut:
    """Dry run: every check `POST /v1/jobs` makes, and resource estimates; nothing is stored."""
    _, est = jobs.validate(session, settings, tenant_id, body)
    return ValidationOut(estimates=est)


@router.post("", status_code=201, openapi_extra=SPEC_BODY, responses=SPEC_ERRORS)
def create_job(
    body: JsonBody,
    request: Request,
    response: Response,
    tenant_id: TenantDep,
    session: WriteSession,
    settings: SettingsDep,
    db: DatabaseDep,
    idempotency_key: Annotated[
        str | None, Header(max_length=255, description="retries with the same key return the first job")
    ] = None,
) -> JobOut:
    """Validate the spec, store the job and queue it. With an Idempotency-Key already used
    for the same spec, the job made then is returned (header `Idempotent-Replayed: true`)."""
    job, created = jobs.create(session, settings, tenant_id, body, idempotency_key)
    session.commit()
    if created:
        enqueue(request.app.state.celery, settings, db.write, job.id)
        request.app.state.publisher.publish(EVENTS, job.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return jobs.to_out(job)


@router.get("")
def list_jobs(
    tenant_id: TenantDep,
    session: ReadSession,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="cursor: the last id of the previous page")] = None,
) -> Page[JobOut]:
    """Newest first."""
    rows, more = jobs.list_page(session, tenant_id, status, limit, after)
    return Page(data=[jobs.to_out(j) for j in rows], has_more=more, next_cursor=rows[-1].id if more else None)


@router.get("/{job_id}")
async def get_job(job: JobDep) -> JobOut:
    return jobs.to_out(job)


@router.post("/{job_id}/cancel", responses={409: error("`job_finished`: the job already ended")})
def cancel_job(job_id: str, request: Request, tenant_id: TenantDep, session: WriteSession) -> JobOut:
    """A queued job is cancelled at once; a running one becomes `cancelling` and its worker
    stops at the next step boundary (keeping a checkpoint), then `cancelled`."""
    job = jobs.cancel(session, tenant_id, job_id)
    session.commit()
    publisher = request.app.state.publisher
    publisher.publish(CONTROL, job_id)
    publisher.publish(EVENTS, job_id)
    return jobs.to_out(job)
