"""Models in and out as archives: importing an uploaded Hugging Face model archive (GPT-2 or
Llama family), a GGUF file, or an exported Stagecraft model; and exporting any servable
model in the Hugging Face layout or as a GGUF file.

Import is three steps: extracting and checking the archive (no torch: a worker thread),
converting it (`import_model`: parsers of untrusted files and torch, so in a child process
with time and memory limits, app.serving.sandbox, which runs app.services.conversion; never
on the inference thread, so one tenant's import holds up nobody's generation nor another
tenant's import), registering it (a worker thread). Export (Hugging Face archives; GGUF
files, models.formats.gguf.writer) runs torch code, on the inference thread.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import InternalError, Invalid, from_model_error
from app.services import adapters, catalog, deletion, model_checks
from app.services.conversion import clean_message, scratch_of
from app.serving import sandbox
from app.storage import get_store, key_of
from app.tables import Model, new_id

log = logging.getLogger("stagecraft.api")


def incoming_path(settings: Settings) -> Path:
    d = settings.models_dir / ".incoming"
    d.mkdir(parents=True, exist_ok=True)
    return d / new_id("up")


def unpack_checked(settings: Settings, archive: Path) -> Path:
    """Extract an uploaded archive and check it (app.services.model_checks) before anything is
    allocated for its model; returns the model folder inside the scratch folder. No torch:
    run it on a worker thread, not the inference thread. Removes the archive; on an error,
    the scratch folder too."""
    from models.errors import TrainingError
    from models.formats.archive import unpack

    scratch = archive.with_name(archive.name + ".d")
    try:
        with archive.open("rb") as f:
            if f.read(4) == b"GGUF":  # a GGUF file is the model itself (its reader checks its shapes)
                scratch.mkdir()
                return archive.rename(scratch / "model.gguf")
        model_checks.check_entries(archive, settings.max_archive_entries)
        source = unpack(archive, scratch, max_bytes=4 * settings.max_model_upload_bytes)
        if not adapters.is_adapter(source):  # an adapter is checked against its base (adapters.convert_upload)
            model_checks.check_model_dir(source, settings)
        return source
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, TrainingError):
            raise from_model_error(exc, "file", clean_message(str(exc), scratch, settings.data_dir)) from None
        raise
    finally:
        archive.unlink(missing_ok=True)


async def import_model(
    settings: Settings, db: Database, tenant_id: str, source: Path, name: str, base_ref: str | None = None
) -> Path:
    """Convert a checked upload (`unpack_checked`; an adapter with the model it adapts,
    `base_ref`) into a folder under the tenant's models, in a sandboxed child process within
    IMPORT_TIMEOUT_S and IMPORT_MEMORY_BYTES (408 / 422 past them); returns the folder. Removes
    the scratch folder, and whatever a failed conversion left, whatever happens."""
    model_id = new_id("model")
    final = settings.models_dir / tenant_id / model_id
    args: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "tenant_id": tenant_id,
                            "source": str(source), "name": name, "model_id": model_id}  # fmt: skip
    try:
        if adapters.is_adapter(source):
            base_id, base = await asyncio.to_thread(_adapter_base, settings, db, tenant_id, source, base_ref or "")
            args.update(base_id=base_id, base=str(base))
        limits = sandbox.Limits(settings.import_timeout_s, settings.import_memory_bytes)
        await sandbox.run("model_import", args, limits, tenant_id, settings.import_workers)
        await asyncio.to_thread(get_store(settings).put, key_of(settings, final))  # stored before its row exists
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(final.with_name(f".{model_id}.partial"), ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch_of(source), ignore_errors=True)  # the child removes it, unless it was killed
    return final


def _adapter_base(settings: Settings, db: Database, tenant_id: str, source: Path, base_ref: str) -> tuple[str, Path]:
    """The id and folder of the model an uploaded PEFT adapter adapts (`base_ref`, or
    adapter_config.json's base_model_name_or_path if it is one of the tenant's ids)."""
    ref = adapters.named_base(source, base_ref)
    with db.read() as session:
        return catalog.resolve(session, settings, tenant_id, ref)


def register(session: Session, settings: Settings, tenant_id: str, name: str, final: Path) -> Model:
    """The converted model's row; if adding it fails, its folder goes too (no orphans)."""
    try:
        if adapters.is_adapter(final):
            model = adapters.register_upload(session, settings, tenant_id, name, final)
        else:
            model = catalog.register_upload(session, settings, tenant_id, name, final)
        session.flush()
        return model
    except BaseException:
        get_store(settings).delete(key_of(settings, final))
        raise


def export_archive(settings: Settings, model_dir: Path, name: str, fmt: str, kind: str, quantization: str = "") -> str:
    """The key of the model at `model_dir` as a .tar.gz or .zip in the `fmt` layout, or (`fmt`
    "gguf") as one .gguf file in `quantization` (an adapter merged into its base), made once per
    model (and quantization) and kept in the store (served from this host's copy, or streamed
    from the store). 422 `unsupported_model` naming what the format cannot represent."""
    from models.errors import UnsupportedModel
    from models.formats.archive import pack
    from models.formats.gguf.kquants import KQuantError
    from models.formats.gguf.writer import write_gguf
    from models.formats.hf.directory import to_hf

    store = get_store(settings)
    folder = key_of(settings, model_dir).replace("/", "-")
    file = f"{name}-{quantization}.gguf" if fmt == "gguf" else f"{name}-{fmt}.{kind}"
    out = settings.models_dir / "exports" / folder / file
    if out.is_file():
        out.touch()  # most recently used: the cache evicts the others first
        return key_of(settings, out)
    if store.remote and store.exists(key_of(settings, out)):
        return key_of(settings, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{fmt}-{new_id('x')}"
    try:
        if fmt == "gguf":  # one file, written whole (models.formats.gguf.writer)
            write_gguf(model_dir, out, quantization, name)
        else:
            if adapters.is_adapter(model_dir):  # a LoRA adapter exports in the PEFT layout
                adapters.export_peft(model_dir, staging)
            else:
                to_hf(model_dir, staging)
            tmp = pack(staging, out.with_name(f".{staging.name}-{out.name}"), f"{name}-{fmt}")
            tmp.replace(out)
    except UnsupportedModel as exc:
        message = f"this model cannot be exported as {fmt}: {exc}"
        raise Invalid(message, [{"loc": "format", "message": message}], code="unsupported_model") from None
    except KQuantError as exc:  # llama.cpp's quantizer: the server's fault; its log is on stderr
        log.error("gguf export of %s failed: %s", model_dir.name, exc)
        raise InternalError(f"the {quantization} export failed on the server: {exc}", code="export_failed") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.put(key_of(settings, out))
    deletion.evict_exports(settings, out)
    return key_of(settings, out)
