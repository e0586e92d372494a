"""OpenAI's files API (`client.files.*`) over Stagecraft datasets: a file id is a dataset id,
so a file uploaded here is a dataset in /v1/datasets and the other way round. Only
`purpose="fine-tune"` is accepted; the file is validated whole (docs/spec.md, data) before it is kept."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api import openai_objects as objects
from app.api.body import ParsedJsonRoute
from app.api.deps import DatabaseDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.openapi import ERRORS, UPLOAD_ERRORS, error
from app.api.uploads import receive_file
from app.services import datasets, deletion
from app.services.openai_ft import bad_param
from app.services.pagination import MAX_LIMIT

router = APIRouter(prefix="/v1/files", tags=["openai fine-tuning"], responses=ERRORS, route_class=ParsedJsonRoute)

UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL records or .txt"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    summary="Upload a file (OpenAI files API)",
    openapi_extra=UPLOAD,
    responses={**UPLOAD_ERRORS, 422: error("`invalid_dataset` (every bad line in details) or an unsupported purpose")},
)
async def create_file(request: Request, tenant_id: TenantDep, settings: SettingsDep, db: DatabaseDep) -> dict[str, Any]:
    upload = await receive_file(request, datasets.incoming_path(settings, tenant_id), settings.max_upload_bytes)
    if upload.purpose != "fine-tune":
        upload.path.unlink(missing_ok=True)
        raise bad_param("purpose", f"'{upload.purpose}' is not supported: only 'fine-tune' is")

    def save() -> dict[str, Any]:
        with db.write() as session:
            ds = datasets.register(session, settings, tenant_id, upload.path, upload.filename, upload.filename,
                                   upload.sha256)  # fmt: skip
            datasets.commit(session, settings, ds)
            return objects.file(ds)

    return await run_in_threadpool(save)


@router.get("", summary="List files (OpenAI files API)")
def list_files(
    tenant_id: TenantDep,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    after: Annotated[str | None, Query(description="the last file id of the previous page")] = None,
    purpose: str | None = None,
    order: Literal["desc"] = "desc",
) -> dict[str, Any]:
    """Newest first; every dataset has the purpose `fine-tune`."""
    if purpose not in (None, "fine-tune"):
        return objects.listing([], False)
    rows, more = datasets.list_page(session, tenant_id, limit, after)
    data = [objects.file(d) for d in rows]
    return objects.listing(data, more, first_id=rows[0].id if rows else None, last_id=rows[-1].id if rows else None)


@router.get("/{file_id}", summary="Retrieve a file (OpenAI files API)")
def retrieve_file(file_id: str, tenant_id: TenantDep, session: ReadSession) -> dict[str, Any]:
    return objects.file(datasets.get(session, tenant_id, file_id))


@router.get("/{file_id}/content", summary="A file's content", response_class=FileResponse)
def file_content(file_id: str, tenant_id: TenantDep, session: ReadSession, settings: SettingsDep) -> FileResponse:
    ds = datasets.get(session, tenant_id, file_id)
    path = datasets.local_path(settings, ds)
    return FileResponse(path, media_type="application/octet-stream", filename=ds.name)


@router.delete(
    "/{file_id}",
    summary="Delete a file (OpenAI files API)",
    responses={409: error("`dataset_in_use`: an unfinished job trains on it")},
)
def delete_file(file_id: str, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep) -> dict[str, Any]:
    path = datasets.delete(session, settings, tenant_id, file_id)
    session.commit()
    deletion.remove(settings, [path])
    return {"id": file_id, "object": "file", "deleted": True}
