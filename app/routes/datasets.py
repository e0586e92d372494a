"""/v1/datasets: upload (multipart, streamed), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from app.deps import DatabaseDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.routes import ERRORS, error
from app.schemas import DatasetOut, Deleted, Page
from app.services import datasets
from app.uploads import receive_file, upload_body

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERRORS)

UPLOAD_BODY = upload_body(".txt or .jsonl (CONTRACT §2)")


@router.post(
    "",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={
        413: error("the file is over the upload limit"),
        415: error("not multipart/form-data"),
        422: error("`invalid_dataset`: details list every bad line as {line, field, reason}"),
    },
)
async def upload_dataset(request: Request, tenant_id: TenantDep, settings: SettingsDep, db: DatabaseDep) -> DatasetOut:
    """Upload a text corpus or supervised records; the whole file is validated before it is kept."""
    upload = await receive_file(request, datasets.incoming_path(settings, tenant_id), settings.max_upload_bytes)

    def save() -> DatasetOut:
        with db.write() as session:
            ds = datasets.register(
                session, settings, tenant_id, upload.path, upload.filename, upload.name, upload.sha256
            )
            session.commit()
            return datasets.to_out(ds)

    return await run_in_threadpool(save)


@router.get("")
def list_datasets(
    tenant_id: TenantDep,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="cursor: the last id of the previous page")] = None,
) -> Page[DatasetOut]:
    rows, more = datasets.list_page(session, tenant_id, limit, after)
    return Page(data=[datasets.to_out(d) for d in rows], has_more=more, next_cursor=rows[-1].id if more else None)


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, tenant_id: TenantDep, session: ReadSession) -> DatasetOut:
    return datasets.to_out(datasets.get(session, tenant_id, dataset_id))


@router.delete("/{dataset_id}", responses={409: error("an unfinished job uses the dataset")})
def delete_dataset(dataset_id: str, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep) -> Deleted:
    path = datasets.delete(session, settings, tenant_id, dataset_id)
    session.commit()
    path.unlink(missing_ok=True)
    return Deleted(id=dataset_id)
