"""/v1/datasets: upload (multipart, streamed), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api import shape
from app.api.body import ParsedJsonRoute
from app.api.deps import DatabaseDep, PageDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.openapi import ERRORS, UPLOAD_ERRORS, error, upload_body
from app.api.schemas import DatasetOut, Deleted, Page
from app.api.uploads import receive_file
from app.services import datasets, deletion

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERRORS, route_class=ParsedJsonRoute)


@router.post(
    "",
    status_code=201,
    openapi_extra=upload_body(".txt or .jsonl (docs/spec.md, data)"),
    responses={**UPLOAD_ERRORS, 422: error("`invalid_dataset`: details list every bad line as {line, field, reason}")},
)
async def upload_dataset(request: Request, tenant_id: TenantDep, settings: SettingsDep, db: DatabaseDep) -> DatasetOut:
    """Upload a text corpus, supervised records or preference records; the whole file is validated
    before it is kept."""
    upload = await receive_file(request, datasets.incoming_path(settings, tenant_id), settings.max_upload_bytes)

    def save() -> DatasetOut:
        with db.write() as session:
            ds = datasets.register(
                session, settings, tenant_id, upload.path, upload.filename, upload.name, upload.sha256
            )
            datasets.commit(session, settings, ds)
            return shape.dataset(ds)

    return await run_in_threadpool(save)


@router.get("")
def list_datasets(tenant_id: TenantDep, session: ReadSession, page: PageDep) -> Page[DatasetOut]:
    rows, more = datasets.list_page(session, tenant_id, page.limit, page.after)
    return shape.page([shape.dataset(d) for d in rows], more, rows[-1].id if rows else None)


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, tenant_id: TenantDep, session: ReadSession) -> DatasetOut:
    return shape.dataset(datasets.get(session, tenant_id, dataset_id))


@router.delete("/{dataset_id}", responses={409: error("an unfinished job uses the dataset")})
def delete_dataset(dataset_id: str, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep) -> Deleted:
    path = datasets.delete(session, settings, tenant_id, dataset_id)
    session.commit()
    deletion.remove(settings, [path])
    return Deleted(id=dataset_id)
