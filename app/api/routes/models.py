"""/v1/models: finished and uploaded models, and checkpoints by id (all usable as `init_from`
and servable); uploading a model (a Hugging Face folder of the GPT-2 or Llama family: gpt2,
llama, mistral, qwen2, qwen3; a GGUF file; an export; a PEFT adapter); exporting one in the
Hugging Face layout or as a GGUF file.

Import extracts and checks an archive on a worker thread and converts it in a child process
with time and memory limits (app.services.archives.import_model); exports run on the serving
cache's one torch thread (`ModelCache.run`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from app.api import shape
from app.api.body import ParsedJsonRoute
from app.api.deps import DatabaseDep, ModelCacheDep, PageDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.openapi import ERRORS, UPLOAD_ERRORS, error, upload_body
from app.api.schemas import CheckpointOut, DeletedModel, ModelOut, Page, ServingOut
from app.api.uploads import receive_file
from app.config import Settings, kv_cache_type
from app.db import Database
from app.errors import Invalid
from app.services import adapters, archives, catalog, deletion, quotas
from app.services.names import NAME_MAX, is_id
from app.serving import precision
from app.storage import get_store
from app.tables import Checkpoint, Model

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS, route_class=ParsedJsonRoute)


@router.get("")
def list_models(tenant_id: TenantDep, session: ReadSession, settings: SettingsDep, page: PageDep) -> Page[ModelOut]:
    rows, more = catalog.list_page(session, tenant_id, page.limit, page.after)
    data = [shape.model(catalog.describe(session, settings, m)) for m in rows]
    return shape.page(data, more, rows[-1].id if rows else None)


@router.get("/{model_id}", responses={409: error("`model_not_ready`: a job id whose job has not succeeded")})
def get_model(
    model_id: str, tenant_id: TenantDep, session: ReadSession, settings: SettingsDep, cache: ModelCacheDep
) -> ModelOut | CheckpointOut:
    """A model id (`model_...`), a checkpoint id (`ckpt_...`) or a job id (`job_...`: its final model),
    with the precisions it is servable and loaded in (`serving`)."""
    found = catalog.find(session, settings, tenant_id, model_id)
    out = shape.checkpoint(found) if isinstance(found, Checkpoint) else shape.model(found)
    row = found if isinstance(found, Checkpoint) else session.get(Model, found.id)
    directory = None if row is None else precision.served_directory(session, settings, row)
    key = None if directory is None else str(directory)
    served = {p: s for (k, p), s in list(cache.entries.items()) if k == key}  # list(): one C call, any thread
    loaded = [p for p in precision.PRECISIONS if p in served]
    allowed = precision.allowed(settings)
    kv = {p: kv_cache_type(settings.inference_kv_cache, p) for p in allowed}
    steps = {p: served[p].batcher.decoder.step_kind for p in loaded}
    out.serving = ServingOut(default_precision=precision.default(settings), precisions=allowed, loaded=loaded,
                             compiled=settings.inference_compile, kv_cache=kv, decode_steps=steps)  # fmt: skip
    return out


UPLOAD_BODY = upload_body(
    ".tar.gz or .zip of a Hugging Face model folder (GPT-2, Llama, Mistral, Qwen2/3: config.json, "
    "safetensors, tokenizer.json or vocab.json + merges.txt), of a Stagecraft export, or a .gguf file; "
    "or of a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) with a `base` field "
    "naming the model it adapts",
    {"base": {"type": "string", "description": "for an adapter: the id of the model it adapts"}},
)


@router.post(
    "",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={
        **UPLOAD_ERRORS,
        408: error("`time_limit_exceeded`: converting the file took longer than IMPORT_TIMEOUT_S"),
        422: error(
            "`unsupported_model`: not a model this service can represent (GPT-2 or Llama family), or one "
            "larger than its limits; `resource_limit_exceeded`: converting it needed more than IMPORT_MEMORY_BYTES"
        ),
    },
)
async def upload_model(
    request: Request, tenant_id: TenantDep, settings: SettingsDep, db: DatabaseDep, cache: ModelCacheDep
) -> ModelOut:
    """Import a model trained elsewhere; its id then serves, exports and seeds `init_from`."""
    path = archives.incoming_path(settings)
    upload = await receive_file(request, path, settings.max_model_upload_bytes, NAME_MAX)

    def check() -> Path:
        try:
            with db.read() as session:  # a quick refusal; the locked check is at `save`
                quotas.check_storage(session, settings, tenant_id, upload.size, lock=False)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        return archives.unpack_checked(settings, upload.path)

    source = await run_in_threadpool(check)
    if adapters.is_adapter(source):  # a PEFT LoRA adapter: checked against its base, which it is served on
        base = await run_in_threadpool(adapter_base, db, settings, tenant_id, source, upload.base)
        final = await archives.import_model(settings, db, tenant_id, source, upload.name, base)
    else:  # converted in a sandboxed child process, not on the inference thread (app.serving.sandbox)
        final = await archives.import_model(settings, db, tenant_id, source, upload.name)

    def save() -> ModelOut:
        try:
            with db.write() as session:
                quotas.check_storage(session, settings, tenant_id)  # `final` counts; locked until the commit
                model = archives.register(session, settings, tenant_id, upload.name, final)
                session.commit()
                return shape.model(catalog.describe(session, settings, model))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)  # no folder without its row
            raise

    return await run_in_threadpool(save)


def adapter_base(db: Database, settings: Settings, tenant_id: str, source: Path, given: str) -> str:
    """The model an uploaded adapter adapts (`base`, or its adapter_config.json's): a model of
    the tenant's, or a job id for its model; 422 naming `base` for a checkpoint (whose folder
    goes with its job), an adapter (adapters do not stack) or anything else, 404 for none of
    the tenant's. On an error the upload's scratch folder goes."""
    try:
        ref = adapters.named_base(source, given)
        if not is_id(ref, "model", "job"):
            what = "a checkpoint" if is_id(ref, "ckpt") else "not a model id"
            raise _bad_base(f"'{ref[:60]}' is {what}: an adapter's base is a model (`model_…`, or a job's `job_…`)")
        with db.read() as session:
            base_id, directory = catalog.resolve(session, settings, tenant_id, ref)
        if adapters.is_adapter(directory):
            of = adapters.info(directory).get("base_id")
            raise _bad_base(f"'{ref}' is an adapter (of '{of}'): adapters do not stack; an adapter's base is a model")
        return base_id
    except BaseException:
        shutil.rmtree(next(p for p in (source, *source.parents) if p.name.endswith(".d")), ignore_errors=True)
        raise


def _bad_base(message: str) -> Invalid:
    return Invalid(message, [{"loc": "base", "message": message}], code="unsupported_model")


@router.delete("/{model_id}", responses={409: error("`in_use`: an unfinished job starts from it (init_from)")})
def delete_model(model_id: str, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep) -> DeletedModel:
    """Delete a model and its files (its export archives too); a job that trained it stays."""
    paths = deletion.delete_model(session, settings, tenant_id, model_id)
    session.commit()
    deletion.remove(settings, paths)
    return DeletedModel(id=model_id)


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/gzip": {}, "application/zip": {}, "application/octet-stream": {}},
            "description": "the archive (format=hf), or the .gguf file (format=gguf)",
        },
        409: error("`model_not_ready`: a job id whose job has not succeeded"),
        422: error(
            "`invalid_request`: `archive` with format=gguf, `quantization` with format=hf, or a quantization "
            "not written (K-quants such as q4_k_m where the server lacks llama.cpp); `unsupported_model`: what the "
            "format cannot represent"
        ),
    },
)
async def export_model(
    model_id: str,
    tenant_id: TenantDep,
    settings: SettingsDep,
    cache: ModelCacheDep,
    db: DatabaseDep,
    format: Literal["hf", "gguf"] = "hf",
    archive: Literal["tar.gz", "zip"] | None = None,
    quantization: str | None = None,
) -> Response:
    """format=hf (the default): an archive (`archive`: tar.gz, the default, or zip) that
    `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load with no custom
    code (GPT2LMHeadModel for arch gpt; LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM
    for arch llama): config.json, model.safetensors, tokenizer files, generation_config.json; an
    adapter in the PEFT layout.

    format=gguf: one .gguf file that llama.cpp runs (architecture gpt2, llama, qwen2 or qwen3;
    the tokenizer and chat template inside; an adapter merged into its base), in `quantization`
    f32, f16 (the default), q8_0, q4_0 or q4_1, or (where llama-cpp-python is installed) a K-quant
    that llama.cpp's own quantizer writes: q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k."""
    kind, quantized = _export_options(format, archive, quantization)

    def build() -> str:
        with db.read() as session:
            directory = catalog.servable(session, settings, tenant_id, model_id)
        return archives.export_archive(settings, directory, model_id, format, kind, quantized)

    key = await cache.run(build)
    media = {"zip": "application/zip", "tar.gz": "application/gzip"}.get(kind, "application/octet-stream")
    store = get_store(settings)
    path = store.path(key)
    if path.is_file():
        return FileResponse(path, media_type=media, filename=path.name)
    stream = await run_in_threadpool(store.open, key)  # another host built it: straight from the store
    disposition = {"Content-Disposition": f'attachment; filename="{path.name}"'}
    return StreamingResponse(iterate_in_threadpool(_chunks(stream)), media_type=media, headers=disposition)


def _export_options(fmt: str, archive: str | None, quantization: str | None) -> tuple[str, str]:
    """The file kind of an export (tar.gz, zip or gguf) and its quantization ("" for hf); 422
    naming an option that does not apply."""
    from models.formats.gguf.quantization import DEFAULT, quantization_error

    def refuse(loc: str, message: str) -> Invalid:
        return Invalid(message, [{"loc": loc, "message": message}])

    if fmt == "hf":
        if quantization is not None:
            raise refuse("quantization", "quantization applies to format=gguf only (format=hf is float32)")
        return archive or "tar.gz", ""
    if archive is not None:
        raise refuse("archive", "archive does not apply to format=gguf: the export is one .gguf file")
    why = quantization_error(quantization or DEFAULT)
    if why is not None:
        raise refuse("quantization", why)
    return "gguf", quantization or DEFAULT


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while block := stream.read(1 << 20):
            yield block
