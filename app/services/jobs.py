"""Jobs as the API reads them: validate a spec (with the tenant's datasets and models),
submit it, list, get. Every change of a job's state is in lifecycle.py."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import NotFound, ServiceError, from_model_error
from app.services import catalog, datasets, lifecycle, quotas, spec_limits
from app.services.estimates import Estimates, estimate
from app.services.names import is_id
from app.services.pagination import page
from app.tables import STATUSES, Job, JobStatus
from models.errors import SpecError
from models.spec import JobSpec, block_errors, data_kind_errors, parse_spec, training_parts


def _invalid(errors: list[dict[str, str]]) -> ServiceError:
    return from_model_error(SpecError(errors))


def _reference_errors(
    session: Session, settings: Settings, tenant_id: str, spec: JobSpec
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """Datasets, init_from and reference models must be this tenant's; objectives need data of
    their kind (finetune: records; preference: preference records)."""
    errors: list[dict[str, str]] = []
    found = datasets.lookup(session, tenant_id, [ref.dataset for ref in spec.data.values()])
    for name, ref in spec.data.items():
        if ref.dataset not in found:
            errors.append({"loc": f"data.{name}.dataset", "message": f"unknown dataset '{ref.dataset}'"})
    kinds = {name: found[ref.dataset].kind for name, ref in spec.data.items() if ref.dataset in found}
    errors += data_kind_errors(spec, kinds)
    base = None
    if spec.model.init_from is not None:
        base_id = spec.model.init_from.model
        base = catalog.base_config(session, settings, tenant_id, base_id)
        if base is None:
            errors.append({"loc": "model.init_from.model", "message": f"unknown model or checkpoint '{base_id}'"})
        elif "n_layer" in base:
            errors += block_errors(spec, int(base["n_layer"]))
    for p in training_parts(spec):  # a preference objective's reference model, resolved as init_from is
        reference = getattr(p.part, "reference", None)
        if reference is not None and catalog.base_config(session, settings, tenant_id, reference.model) is None:
            message = f"unknown model or checkpoint '{reference.model}'"
            errors.append({"loc": f"{p.loc}.reference.model", "message": message})
    return errors, base


def validate(session: Session, settings: Settings, tenant_id: str, raw: Any) -> tuple[JobSpec, Estimates]:
    """Parse and check a spec completely, or raise 422 `invalid_spec` listing every error
    (422 `resource_limit_exceeded` for a valid spec over the service's limits)."""
    if nul := spec_limits.nul_errors(raw):
        raise _invalid(nul)
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        raise from_model_error(exc) from None
    errors, base = _reference_errors(session, settings, tenant_id, spec)
    if errors:
        raise _invalid(errors)
    est = estimate(spec, base)
    spec_limits.check_resources(settings, spec, est)
    return spec, est


def submit(
    session: Session, settings: Settings, tenant_id: str, raw: Any, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Validate a spec completely and create its job (lifecycle.create); returns (job, created)."""
    spec, est = validate(session, settings, tenant_id, raw)
    quotas.check_jobs(session, settings, tenant_id)
    quotas.check_storage(session, settings, tenant_id)  # checkpoints of its jobs included
    return lifecycle.create(
        session, tenant_id, spec.name, spec.model_dump(mode="json"), asdict(est), spec.total_steps, idempotency_key
    )


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True) if is_id(job_id) else None
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job '{job_id}'")
    return job


# Built once: constructing the expression costs more than compiling it (which is cached).
_RECORD = select(Job.__table__).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


def record(conn: Connection, tenant_id: str, job_id: str) -> Row[Any]:
    """The tenant's job as a row (the columns, by name, as on Job) or 404: what GET reads,
    one statement without an ORM object (on `Database.autocommit`, one round trip)."""
    row = conn.execute(_RECORD, {"job_id": job_id, "tenant_id": tenant_id}).first() if is_id(job_id) else None
    if row is None:
        raise NotFound(f"no job '{job_id}'")
    return row


def list_page(
    session: Session, tenant_id: str, status: JobStatus | None, limit: int, after: str | None
) -> tuple[list[Job], bool]:
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(Job.status == status)
    return page(session, stmt, Job.id, limit, after)


def count_by_status(session: Session) -> dict[str, int]:
    """Every tenant's jobs, counted by status (all statuses, zeros included)."""
    counts: dict[str, int] = {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}
    return {status: counts.get(status, 0) for status in STATUSES}


def workdir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id
