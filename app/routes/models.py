"""/v1/models: finished and uploaded models, and checkpoints by id (all usable as `init_from`
and servable); uploading a Hugging Face GPT-2-family model; exporting one in that layout."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from app.deps import DatabaseDep, EngineDep, ReadSession, SettingsDep, TenantDep
from app.errors import NotFound
from app.routes import ERRORS, error
from app.schemas import CheckpointOut, ModelOut, Page
from app.services import metrics, model_files, models
from app.uploads import receive_file, upload_body

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.get("")
def list_models(
    tenant_id: TenantDep,
    session: ReadSession,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="cursor: the last id of the previous page")] = None,
) -> Page[ModelOut]:
    rows, more = models.list_page(session, tenant_id, limit, after)
    return Page(
        data=[models.to_out(session, settings, m) for m in rows],
        has_more=more,
        next_cursor=rows[-1].id if more else None,
    )


@router.get("/{model_id}")
def get_model(
    model_id: str, tenant_id: TenantDep, session: ReadSession, settings: SettingsDep
) -> ModelOut | CheckpointOut:
    """A model id (`model_...`) or a checkpoint id (`ckpt_...`)."""
    if model_id.startswith("ckpt_"):
        found = models.checkpoint_of(session, tenant_id, model_id)
        if found is None:
            raise NotFound(f"no model or checkpoint '{model_id}'")
        return metrics.checkpoint_out(found[0])
    return models.to_out(session, settings, models.get(session, tenant_id, model_id))


UPLOAD_BODY = upload_body(
    ".tar.gz or .zip of a GPT-2-family model folder (Hugging Face layout: config.json, model.safetensors, "
    "tokenizer.json or vocab.json + merges.txt), or of a Stagecraft export"
)


@router.post(
    "",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={
        413: error("the file is over the upload limit"),
        415: error("not multipart/form-data"),
        422: error("`unsupported_model`: not an archive of a GPT-2-family model this service can represent"),
    },
)
async def upload_model(
    request: Request, tenant_id: TenantDep, settings: SettingsDep, db: DatabaseDep, engine: EngineDep
) -> ModelOut:
    """Import a model trained elsewhere; its id then serves, exports and seeds `init_from`."""
    dest = model_files.incoming_path(settings)
    upload = await receive_file(request, dest, settings.max_model_upload_bytes)

    def save() -> ModelOut:
        with db.write() as session:
            model = model_files.import_archive(session, settings, tenant_id, upload.path, upload.name)
            session.commit()
            return models.to_out(session, settings, model)

    return await engine.run(save)  # torch work: on the thread that runs all of it (app.inference)


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}, "application/zip": {}}, "description": "the archive"},
        409: error("`model_not_ready`: a job id whose job has not succeeded"),
    },
)
async def export_model(
    model_id: str,
    tenant_id: TenantDep,
    settings: SettingsDep,
    engine: EngineDep,
    db: DatabaseDep,
    format: Literal["hf"] = "hf",
    archive: Literal["tar.gz", "zip"] = "tar.gz",
) -> FileResponse:
    """An archive that `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer`
    load with no custom code (GPT2LMHeadModel): config.json, model.safetensors, tokenizer
    files, generation_config.json."""

    def build() -> Any:
        with db.read() as session:
            directory = models.servable(session, settings, tenant_id, model_id)
        return model_files.export_archive(settings, directory, model_id, format, archive)

    path = await engine.run(build)  # torch work: on the thread that runs all of it (app.inference)
    media = "application/zip" if archive == "zip" else "application/gzip"
    return FileResponse(path, media_type=media, filename=path.name)
