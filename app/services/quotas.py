"""Per-tenant quotas (settings `tenant_max_*`): queued and unfinished jobs and stored bytes at
submit or upload, each a 429 `quota_exceeded` that names the setting; running jobs at claim
time (`running_slot`: a job whose tenant already runs its most stays queued). Storage counts
datasets, uploaded models and jobs' folders; a tenant over it can neither upload nor submit
(its running jobs finish: they are bounded by their spec's checkpointing.keep_last).

A check and the insert after it are one step under concurrency: `check_jobs` and
`check_storage` first take the tenant's row lock (`lock_tenant`, SELECT ... FOR UPDATE on
PostgreSQL), held until the caller's transaction ends, so a tenant's concurrent submits and
uploads take turns between their count and their commit (other tenants are not held up); on
SQLite, write sessions (BEGIN IMMEDIATE) take turns already. A lock on the row, not an
advisory lock: it is released by the commit or rollback that ends the transaction whatever
happens, names what it serializes, and is what `running_slot` takes for the same tenant."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import QuotaExceeded
from app.storage import get_store
from app.tables import ACTIVE, Dataset, Job, Tenant, utcnow

RUNNING = ("running", "cancelling")  # a cancelling job still holds its worker


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Hold the tenant's row until the session's transaction ends (the caller commits)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def check_jobs(session: Session, settings: Settings, tenant_id: str) -> None:
    lock_tenant(session, tenant_id)
    stmt = select(Job.status, func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    counts: dict[str, int] = {status: n for status, n in session.execute(stmt.group_by(Job.status))}
    queued, unfinished = counts.get("queued", 0), sum(counts.values())
    if queued >= settings.tenant_max_queued_jobs:
        raise QuotaExceeded(
            f"this tenant has {queued} queued jobs, the most it may have (setting TENANT_MAX_QUEUED_JOBS); "
            "submit more once some have started"
        )
    if unfinished >= settings.tenant_max_unfinished_jobs:
        raise QuotaExceeded(
            f"this tenant has {unfinished} unfinished jobs, the most it may have (setting TENANT_MAX_UNFINISHED_JOBS)"
        )


def running_slot(session: Session, job_id: str, limit: int) -> int | None:
    """Before a queued job is claimed: None when its tenant may run one more job (or `limit`
    is 0, no limit), else how many it runs now; the job is then touched (updated_at), so a
    worker does not take its wait for a broker that stopped delivering. Claims of one
    tenant's jobs take turns on its tenant row (FOR UPDATE; SQLite's write transactions take
    turns anyway), so two workers cannot both take the last slot."""
    if limit <= 0:
        return None
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id, Job.status == "queued"))
    if tenant_id is None:
        return None  # the claim will find nothing to take
    lock_tenant(session, tenant_id)
    running = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(RUNNING))) or 0
    if running < limit:
        return None
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(updated_at=utcnow()))
    return running


def storage_used(session: Session, settings: Settings, tenant_id: str) -> int:
    """Bytes the tenant stores: its datasets, its uploaded models, and every job's folder
    (checkpoints, the trained model, exported checkpoints, staging)."""
    datasets = session.scalar(select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.tenant_id == tenant_id))
    job_ids = session.scalars(select(Job.id).where(Job.tenant_id == tenant_id))
    store = get_store(settings)  # with an object store: what it holds, not this host's cache
    jobs = sum(store.size(f"jobs/{job_id}") for job_id in job_ids)  # = jobs.workdir
    return int(datasets or 0) + store.size(f"models/{tenant_id}") + jobs


def check_storage(session: Session, settings: Settings, tenant_id: str, adding: int = 0, *, lock: bool = True) -> None:
    """429 unless the tenant's storage with `adding` bytes more stays within its quota (files
    already on disk, a converted model not yet registered say, count as stored). `lock=False`:
    an early refusal only, before work that should not hold the lock (the locked check follows)."""
    if lock:
        lock_tenant(session, tenant_id)
    used = storage_used(session, settings, tenant_id)
    if used + adding > settings.tenant_max_storage_bytes:
        raise QuotaExceeded(
            f"this tenant stores {used} bytes; with {adding} more it would pass its quota of "
            f"{settings.tenant_max_storage_bytes} (setting TENANT_MAX_STORAGE_BYTES): "
            "delete datasets, models or jobs first"
        )
