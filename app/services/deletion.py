"""Deleting jobs and models with their files: the rows go in the caller's transaction, the
files once it has committed (a failed commit leaves both). A job can be deleted once it has
ended (cancel a running one first); its events, metrics, checkpoints and the model it trained
go with it. Neither can be deleted while an unfinished job of the tenant starts from it
(`init_from`) or compares with it (a preference stage's `reference`). Another tenant's object
is a 404, as everywhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict
from app.services import adapters, catalog, jobs
from app.storage import StorageError, get_store
from app.tables import ACTIVE, FINISHED, Checkpoint, Job, Model

log = logging.getLogger(__name__)

EXPORTS = "exports"  # under models_dir: archives made by app.services.archives.export_archive


def export_key(settings: Settings, model_dir: Path) -> str:
    """The export cache folder of a model directory (as export_archive names it)."""
    return str(model_dir.relative_to(settings.data_dir)).replace("/", "-")


def _models_read(spec: dict[str, Any]) -> set[str]:
    """The model ids a stored spec reads: its `init_from`, and preference stages' and phases'
    `reference` models."""
    found = {((spec.get("model") or {}).get("init_from") or {}).get("model")}
    for stage in spec.get("stages") or []:
        for part in [stage, *(stage.get("phases") or [])]:
            found.add((part.get("reference") or {}).get("model"))
    return {m for m in found if isinstance(m, str)}


def _not_in_use(session: Session, tenant_id: str, refs: set[str], what: str) -> None:
    active = session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE)))
    users = [j.id for j in active if _models_read(j.spec) & refs]
    if users:
        raise Conflict(f"{what} is the base or reference of unfinished job(s) {', '.join(users)}", code="in_use")


def delete_job(session: Session, settings: Settings, tenant_id: str, job_id: str) -> list[Path]:
    """Remove a finished job's rows (409 `job_active` before it has ended); returns its files."""
    job = jobs.get(session, tenant_id, job_id)
    if job.status not in FINISHED:
        raise Conflict(
            f"job '{job_id}' is {job.status}: cancel it (POST /v1/jobs/{job_id}/cancel), "
            "and delete it once it has ended",
            code="job_active",
        )
    refs = {job.id, *session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job.id))}
    model = session.scalar(select(Model).where(Model.job_id == job.id))
    if model is not None:
        refs.add(model.id)
    _not_in_use(session, tenant_id, refs, f"job '{job_id}'")
    paths = [jobs.workdir(settings, job.id)]
    exports = settings.models_dir / EXPORTS
    paths += [p for p in exports.glob(f"{export_key(settings, paths[0])}-*")] if exports.is_dir() else []
    if model is not None:
        paths += [settings.data_dir / model.path, exports / export_key(settings, settings.data_dir / model.path)]
        _drop_inside(session, settings, tenant_id, model)
    session.execute(delete(Job).where(Job.id == job.id))  # events, metrics, checkpoints, model: ON DELETE CASCADE
    return paths


def delete_model(session: Session, settings: Settings, tenant_id: str, model_id: str) -> list[Path]:
    """Remove a model's row (its job, if any, stays, with no model); returns its files."""
    model = catalog.get(session, tenant_id, model_id)
    _not_in_use(session, tenant_id, {model.id}, f"model '{model_id}'")
    if model.job_id is not None:
        job = session.get(Job, model.job_id)
        if job is not None:
            job.model_id = None
    directory = settings.data_dir / model.path
    _drop_inside(session, settings, tenant_id, model)
    session.delete(model)
    return [directory, settings.models_dir / EXPORTS / export_key(settings, directory)]


def _drop_inside(session: Session, settings: Settings, tenant_id: str, model: Model) -> None:
    """A job model's adapters and their base (rows for folders inside its own) go with it;
    409 `in_use` while an adapter kept elsewhere has it, or one of those, as its base."""
    going = adapters.inside(session, settings, tenant_id, settings.data_dir / model.path)
    ids = {model.id, *(m.id for m in going)}
    _not_in_use(session, tenant_id, ids, f"model '{model.id}'")
    for m in [model, *going]:
        adapters.check_no_users(session, settings, tenant_id, m, ids)
    for m in going:
        session.delete(m)


def remove(settings: Settings, paths: list[Path]) -> None:
    """Remove the artifacts at `paths` (under the data directory): the local copies and the
    store's objects. The rows are gone already: a store that fails now leaves objects no row
    names (logged), never a row without its objects."""
    store = get_store(settings)
    for p in paths:
        try:
            store.delete(str(p.relative_to(settings.data_dir)))
        except StorageError as exc:
            log.error("deleting %s: %s (the objects stay in the store)", p, exc)


def evict_exports(settings: Settings, keep: Path) -> None:
    """Oldest-used export archives first, until the cache is within `export_cache_bytes`
    (`keep`, the archive just asked for, stays whatever its size)."""
    root = settings.models_dir / EXPORTS
    files = [p for p in root.glob("*/*") if p.is_file() and not p.name.startswith(".")]
    total = sum(p.stat().st_size for p in files)
    for p in sorted(files, key=lambda p: p.stat().st_mtime):
        if total <= settings.export_cache_bytes:
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
