"""Jobs as the API sees them: validate, create (idempotently), list, get, cancel.

States: queued → running → succeeded | failed | cancelled, with cancelling between
running and cancelled (the worker stops at its next step) and queued → cancelled
directly. The worker side of the machine (claims, leases, finishing) is in lifecycle.py.
Every transition is a conditional UPDATE, so the API and the workers never race.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, Invalid, NotFound
from app.schemas import Estimates, JobOut
from app.services import datasets, events, models
from app.services.estimates import estimate
from app.services.pagination import page
from app.tables import FINISHED, Job, new_id, utcnow
from models.spec import JobSpec, MultistepStage, SpecError, parse_spec


def _invalid(errors: list[dict[str, str]]) -> Invalid:
    return Invalid(f"the job spec has {len(errors)} error(s)", errors, code="invalid_spec")


def _reference_errors(
    session: Session, settings: Settings, tenant_id: str, spec: JobSpec
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """Datasets and init_from models must be this tenant's; finetune objectives need records."""
    errors: list[dict[str, str]] = []
    found = datasets.lookup(session, tenant_id, [ref.dataset for ref in spec.data.values()])
    for name, ref in spec.data.items():
        if ref.dataset not in found:
            errors.append({"loc": f"data.{name}.dataset", "message": f"unknown dataset '{ref.dataset}'"})
    kinds = {name: found[ref.dataset].kind for name, ref in spec.data.items() if ref.dataset in found}
    for i, stage in enumerate(spec.stages):
        parts = (
            [(f"stages.{i}.phases.{j}", p.objective, p.data) for j, p in enumerate(stage.phases)]
            if isinstance(stage, MultistepStage)
            else [(f"stages.{i}", stage.type, stage.data)]
        )
        for loc, objective, data in parts:
            if objective == "finetune" and kinds.get(data) == "text":
                errors.append(
                    {
                        "loc": f"{loc}.data",
                        "message": f"a finetune objective needs supervised records, but '{data}' is a text corpus",
                    }
                )
    base = None
    if spec.model.init_from is not None:
        base_id = spec.model.init_from.model
        base = models.base_config(session, settings, tenant_id, base_id)
        if base is None:
            errors.append({"loc": "model.init_from.model", "message": f"unknown model or checkpoint '{base_id}'"})
    return errors, base


def validate(session: Session, settings: Settings, tenant_id: str, raw: Any) -> tuple[JobSpec, Estimates]:
    """Parse and check a spec completely, or raise 422 `invalid_spec` listing every error."""
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        raise _invalid(exc.errors) from None
    errors, base = _reference_errors(session, settings, tenant_id, spec)
    if errors:
        raise _invalid(errors)
    return spec, estimate(spec, base)


def create(
    session: Session, settings: Settings, tenant_id: str, raw: Any, idempotency_key: str | None
) -> tuple[Job, bool]:
    """A queued job (the caller commits, then enqueues), or the job an idempotency key already made.

    Returns (job, created).
    """
    spec, est = validate(session, settings, tenant_id, raw)
    spec_json = spec.model_dump(mode="json")
    if idempotency_key:
        existing = _by_key(session, tenant_id, idempotency_key, spec_json)
        if existing is not None:
            return existing, False
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=spec.name,
        status="queued",
        spec=spec_json,
        estimates=est.model_dump(),
        total_steps=spec.total_steps,
        idempotency_key=idempotency_key or None,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # a concurrent request with the same key won
        existing = _by_key(session, tenant_id, str(idempotency_key), spec_json)
        if existing is None:
            raise
        return existing, False
    events.append(session, job.id, [events.make("job.queued", 0, {"total_steps": spec.total_steps})])
    return job, True


def _by_key(session: Session, tenant_id: str, key: str, spec_json: dict[str, Any]) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.spec != spec_json:
        raise Conflict("this Idempotency-Key was already used with a different spec", code="idempotency_key_reused")
    return job


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job '{job_id}'")
    return job


def list_page(
    session: Session, tenant_id: str, status: str | None, limit: int, after: str | None
) -> tuple[list[Job], bool]:
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(Job.status == status)
    return page(session, stmt, Job.id, limit, after)


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Queued: cancelled now. Running: cancelling until the worker stops. Finished: 409."""
    job = get(session, tenant_id, job_id)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .returning(Job.id)
    ).first()
    if done:
        events.append(session, job_id, [events.make("job.cancelled", job.step, {"reason": "cancelled while queued"})])
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(status="cancelling", cancel_requested=True, updated_at=now)
        )
    job = get(session, tenant_id, job_id)
    if job.status in FINISHED and not done:
        raise Conflict(f"job '{job_id}' already finished ({job.status})", code="job_finished")
    return job


def to_out(job: Job) -> JobOut:
    stage = None if job.stage_index is None else {"index": job.stage_index, "name": job.stage_name}
    error = None if job.error_code is None else {"code": job.error_code, "message": job.error_message or ""}
    return JobOut(
        id=job.id,
        name=job.name,
        status=job.status,  # type: ignore[arg-type]
        stage=stage,  # type: ignore[arg-type]
        step=job.step,
        total_steps=job.total_steps,
        progress=round(min(1.0, job.step / job.total_steps), 4) if job.total_steps else 0.0,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempt=job.attempt,
        error=error,  # type: ignore[arg-type]
        model_id=job.model_id,
        estimates=job.estimates,
        spec=job.spec,
    )


def workdir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id
