"""Datasets: validated uploads kept under the data directory, one row each."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, NotFound, from_model_error
from app.services import quotas
from app.services.names import is_id
from app.services.pagination import page
from app.storage import get_store
from app.tables import ACTIVE, Dataset, Job, new_id
from models.data.records import scan_path
from models.errors import DataError

SUFFIXES = (".txt", ".jsonl")


def incoming_path(settings: Settings, tenant_id: str) -> Path:
    """Where an upload is streamed before validation: next to its final place, so the move is a rename."""
    d = settings.datasets_dir / tenant_id
    d.mkdir(parents=True, exist_ok=True)
    return d / f".incoming-{new_id('up')}"


def register(
    session: Session, settings: Settings, tenant_id: str, upload: Path, filename: str, name: str, sha256: str
) -> Dataset:
    """Validate an uploaded file (every bad line reported at once), keep it and add its row.

    `session` is a fresh write session; the caller commits; on any error the uploaded file is
    removed. The storage quota is checked before the file is validated (a quick refusal) and
    again, under the tenant's lock, after (app.services.quotas): no transaction stays open
    while a large file is read.
    """
    try:
        size = upload.stat().st_size
        quotas.check_storage(session, settings, tenant_id, size, lock=False)
        session.rollback()  # no transaction (nor SQLite's write lock) held while the file is validated
        try:
            parsed = scan_path(upload, filename)
        except DataError as exc:  # its source is `filename`
            raise from_model_error(exc) from None
        quotas.check_storage(session, settings, tenant_id, size)  # locked until the caller commits
        ds_id = new_id("ds")
        final = upload.with_name(ds_id + Path(filename).suffix.lower())
        os.replace(upload, final)
        try:
            get_store(settings).put(str(final.relative_to(settings.data_dir)))  # stored before its row exists
        except BaseException:
            final.unlink(missing_ok=True)
            raise
    finally:
        upload.unlink(missing_ok=True)
    ds = Dataset(
        id=ds_id,
        tenant_id=tenant_id,
        name=name,
        kind=parsed.kind,
        format=parsed.format,
        num_records=parsed.num_records,
        bytes=final.stat().st_size,
        sha256=sha256,
        path=str(final.relative_to(settings.data_dir)),
    )
    session.add(ds)
    return ds


def commit(session: Session, settings: Settings, ds: Dataset) -> None:
    """Commit a registered dataset's row; if that fails, its file goes too (no file without a row)."""
    try:
        session.commit()
    except BaseException:
        get_store(settings).delete(ds.path)
        raise


def get(session: Session, tenant_id: str, ds_id: str) -> Dataset:
    ds = session.get(Dataset, ds_id) if is_id(ds_id) else None
    if ds is None or ds.tenant_id != tenant_id:
        raise NotFound(f"no dataset '{ds_id}'")
    return ds


def list_page(session: Session, tenant_id: str, limit: int, after: str | None) -> tuple[list[Dataset], bool]:
    return page(session, select(Dataset).where(Dataset.tenant_id == tenant_id), Dataset.id, limit, after)


def lookup(session: Session, tenant_id: str, ids: list[str]) -> dict[str, Dataset]:
    ids = [i for i in ids if is_id(i)]
    rows = session.scalars(select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.id.in_(ids)))
    return {ds.id: ds for ds in rows}


def delete(session: Session, settings: Settings, tenant_id: str, ds_id: str) -> Path:
    """Remove the row (409 while an unfinished job reads the dataset); returns the file to
    remove once the caller has committed."""
    ds = get(session, tenant_id, ds_id)
    active = session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE)))
    users = [j.id for j in active if any(ref.get("dataset") == ds_id for ref in j.spec.get("data", {}).values())]
    if users:
        raise Conflict(f"dataset '{ds_id}' is used by unfinished job(s) {', '.join(users)}", code="dataset_in_use")
    session.delete(ds)
    return settings.data_dir / ds.path


def local_path(settings: Settings, ds: Dataset) -> Path:
    """A local copy of the dataset's file (from the store if this host has none)."""
    return get_store(settings).get(ds.path)
