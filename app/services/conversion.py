"""What the model-import sandbox's child runs (app.serving.sandbox's `model_import` entry):
converting a checked upload into a model folder under the tenant's models.

Apart from app.services.archives, which registers, stores and exports models, so that a child
imports torch and the model code but not the service's database, queue and storage layers
(they were a quarter of every import's start here: 0.65 s of 2.9).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import from_model_error
from app.services import adapters
from app.tables import new_id
from models.events import timestamp

log = logging.getLogger("stagecraft.api")


def clean_message(message: str, *paths: Path) -> str:
    """A message without the server's paths (the folder an archive was unpacked into, say)."""
    for p in sorted({str(p) for p in paths}, key=len, reverse=True):
        message = message.replace(p + "/", "").replace(p, "(archive)")
    return message


def scratch_of(source: Path) -> Path:
    """The scratch folder (`*.d`) an upload was unpacked into: `source` or one above it."""
    return next(p for p in (source, *source.parents) if p.name.endswith(".d"))


def sandboxed_convert(args: dict[str, Any]) -> str:
    """The sandbox's `model_import` entry, in the child process: `convert` (or, for an adapter,
    adapters.convert_upload) from `import_model`'s JSON arguments; returns the folder written."""
    settings, source = Settings(**args["settings"]), Path(args["source"])
    tenant_id, name, model_id = args["tenant_id"], args["name"], args["model_id"]
    if "base" in args:
        base_id, base = args["base_id"], Path(args["base"])
        return str(adapters.convert_upload(settings, tenant_id, source, name, base_id, base, model_id))
    return str(convert(settings, tenant_id, source, name, model_id))


def convert(settings: Settings, tenant_id: str, source: Path, name: str, model_id: str = "") -> Path:
    """Load a checked model folder and save it as ours under the tenant's models (torch: in the
    import sandbox, `import_model`); returns its folder, named by its model id (a new one unless
    given). Removes `source`'s scratch folder whatever happens."""
    from models.data.chat_records import save_chat_format
    from models.formats.load import chat_format_of, load_model
    from models.formats.native import save_model

    scratch = scratch_of(source)
    model_id = model_id or new_id("model")
    final = settings.models_dir / tenant_id / model_id
    tmp = final.with_name(f".{model_id}.partial")
    try:
        model, tok = load_model(source)
        info = {"name": name, "steps": 0, "created_at": timestamp(), "parameters": model.num_parameters(),
                "source": name}  # fmt: skip
        save_model(tmp, model.state_dict(), model.config, tok, info)
        chat = chat_format_of(source)
        if chat is not None:  # where serving and init_from find the conversation format
            save_chat_format(tmp, chat)
        tmp.rename(final)
    except Exception as exc:  # what the loaders raise on data the checks let through
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, MemoryError)) and not isinstance(exc, FileNotFoundError):
            raise  # the disk's or the import limit's (app.serving.sandbox), not the file's
        log.info("model import refused: %r", exc)
        message = clean_message(f"not a model this service can import: {exc}", scratch, settings.data_dir)
        raise from_model_error(exc, "file", message) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
