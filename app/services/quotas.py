"""Per-tenant quotas (settings `tenant_max_*`): unfinished jobs and stored bytes, each a 429
`quota_exceeded` that names the setting. Storage counts datasets and uploaded models (what a
tenant uploads); jobs' own files are bounded by their spec (checkpointing.keep_last)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import ServiceError
from app.tables import ACTIVE, Dataset, Job


class QuotaExceeded(ServiceError):
    status, code = 429, "quota_exceeded"


def check_jobs(session: Session, settings: Settings, tenant_id: str) -> None:
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


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def storage_used(session: Session, settings: Settings, tenant_id: str) -> int:
    datasets = session.scalar(select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.tenant_id == tenant_id))
    return int(datasets or 0) + _tree_bytes(settings.models_dir / tenant_id)


def check_storage(session: Session, settings: Settings, tenant_id: str, adding: int = 0) -> None:
    used = storage_used(session, settings, tenant_id)
    if used + adding > settings.tenant_max_storage_bytes:
        raise QuotaExceeded(
            f"this tenant stores {used} bytes; with {adding} more it would pass its quota of "
            f"{settings.tenant_max_storage_bytes} (setting TENANT_MAX_STORAGE_BYTES): delete datasets or models first"
        )
