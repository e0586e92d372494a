"""Models in and out as archives: importing an uploaded Hugging Face model archive (GPT-2 or
Llama family), a GGUF file, or an exported Stagecraft model; and exporting any servable
model in the Hugging Face layout.

Both run torch code: the routes run them on the inference thread (`ModelCache.run`, in
app.serving), never on the event loop or a thread-pool thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Invalid
from app.services import catalog
from app.tables import Model, new_id
from models.events import timestamp


def incoming_path(settings: Settings) -> Path:
    d = settings.models_dir / ".incoming"
    d.mkdir(parents=True, exist_ok=True)
    return d / new_id("up")


def import_archive(session: Session, settings: Settings, tenant_id: str, archive: Path, name: str) -> Model:
    """Unpack, convert to our model directory (tokenizer included) and register; 422
    `unsupported_model` for anything that is not a GPT-2-family model we can represent."""
    from models import artifact
    from models.archive import unpack
    from models.chat_records import save_chat_format
    from models.errors import TrainingError

    model_id = new_id("model")
    scratch = archive.with_name(archive.name + ".d")
    final = settings.models_dir / tenant_id / model_id
    try:
        is_file = artifact.is_gguf(archive)  # a GGUF file is the model itself, not an archive
        source = archive if is_file else unpack(archive, scratch, max_bytes=4 * settings.max_model_upload_bytes)
        model, tok = artifact.load_model(source)
        created = timestamp()
        info = {"name": name, "steps": 0, "created_at": created, "parameters": model.num_parameters(), "source": name}
        tmp = final.with_name(f".{model_id}.partial")
        artifact.save_model(tmp, model.state_dict(), model.config, tok, info)
        chat = artifact.chat_format_of(source)
        if chat is not None:  # where serving and init_from find the conversation format
            save_chat_format(tmp, chat)
        tmp.rename(final)
    except TrainingError as exc:
        raise Invalid(str(exc), [{"loc": "file", "message": str(exc)}], code="unsupported_model") from None
    except (FileNotFoundError, KeyError, ValueError) as exc:
        message = f"not a model archive: {exc}"
        raise Invalid(message, [{"loc": "file", "message": message}], code="unsupported_model") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return catalog.register_upload(session, settings, tenant_id, name, final)


def export_archive(settings: Settings, model_dir: Path, name: str, fmt: str, kind: str) -> Path:
    """The model at `model_dir` as a .tar.gz or .zip in the `fmt` layout, made once per model."""
    from models.archive import pack
    from models.hf import to_hf

    key = str(model_dir.relative_to(settings.data_dir)).replace("/", "-")
    out = settings.models_dir / "exports" / key / f"{name}-{fmt}.{kind}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{fmt}-{new_id('x')}"
    try:
        to_hf(model_dir, staging)
        tmp = pack(staging, out.with_name(f".{staging.name}-{out.name}"), f"{name}-{fmt}")
        tmp.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
