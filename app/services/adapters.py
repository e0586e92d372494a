"""LoRA adapters in the catalogue: a model row whose folder is a PEFT adapter (adapter_config.json,
adapter_model.safetensors) with a stagecraft.json naming its base: `base_id` (the tenant's model
or checkpoint id that lists as its base) and `base_path` (that base's folder, relative to the
adapter's, which `models.formats.load.load_with_base` reads for init_from and export).

Two ways in: a finished job that trained adapters (each of model/adapters/<name> becomes a row;
a base that trained too, model/base, becomes a row of its own so its adapters have a base to
list and to share when served), and an uploaded PEFT archive with `base` (app.services.archives).
Serving loads the base once and adds each adapter to its decoder (app.serving.engine); nothing
here imports torch except `convert_upload`, which runs in the import sandbox (app.services.archives).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, Invalid, from_model_error
from app.tables import Job, Model, new_id
from models.formats.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, parameter_count

INFO = "stagecraft.json"


def is_adapter(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


def info(directory: Path) -> dict[str, Any]:
    try:
        found = json.loads((directory / INFO).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def base_dir(directory: Path) -> Path | None:
    """The base model folder of an adapter folder (None if it has lost it)."""
    rel = info(directory).get("base_path")
    return (directory / rel).resolve() if isinstance(rel, str) and rel else None


def describe(directory: Path) -> dict[str, Any]:
    """What a listing shows of an adapter: its base, rank, alpha, adapted modules, and the base's config."""
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        config = {}
    base = base_dir(directory)
    try:
        record = json.loads((base / "config.json").read_text()) if base is not None else {}
    except (OSError, ValueError):
        record = {}
    modules = sorted({str(m).rsplit(".", 1)[-1] for m in config.get("target_modules") or []})
    meta = info(directory)
    return {
        "base": meta.get("base_id"),
        "job_id": meta.get("job_id"),
        "adapter": {"rank": config.get("r"), "alpha": config.get("lora_alpha"), "modules": modules},
        "config": record.get(record.get("arch", "gpt"), {}),
    }


def _row(settings: Settings, tenant_id: str, name: str, directory: Path, steps: int, model_id: str = "") -> Model:
    return Model(
        id=model_id or new_id("model"),
        tenant_id=tenant_id,
        job_id=None,
        name=name[:100],
        path=str(directory.relative_to(settings.data_dir)),
        parameters=parameter_count(directory / ADAPTER_WEIGHTS),
        steps=steps,
        evaluation={},
    )


def _write_info(directory: Path, base_id: str | None, base: Path, **extra: Any) -> None:
    meta = {**info(directory), **extra, "base_id": base_id, "base_path": os.path.relpath(base, directory)}
    (directory / INFO).write_text(json.dumps(meta))


def register_job(session: Session, settings: Settings, job: Job, model_dir: Path, base_path: Path | None) -> None:
    """Rows for the adapters a finished job wrote (model/adapters/<name>); `base_path`: the
    folder of its init_from base when the base never trained (else model/base is the base)."""
    root = model_dir / "adapters"
    if not root.is_dir():
        return
    steps = int(json.loads((model_dir / "config.json").read_text()).get("steps", 0))
    base_id = (job.spec["model"].get("init_from") or {}).get("model")
    if (model_dir / "base" / "config.json").is_file():  # the base trained too: it is a model of its own
        config = json.loads((model_dir / "base" / "config.json").read_text())
        row = Model(
            id=new_id("model"),
            tenant_id=job.tenant_id,
            job_id=None,
            name=f"{job.name} (base of its adapters)"[:100],
            path=str((model_dir / "base").relative_to(settings.data_dir)),
            parameters=int(config.get("parameters", 0)),
            steps=steps,
            evaluation={},
        )
        session.add(row)
        base_id, base_path = row.id, model_dir / "base"
    if base_path is None:
        return
    for d in sorted(p for p in root.iterdir() if is_adapter(p)):
        _write_info(d, base_id, base_path, job_id=job.id)
        session.add(_row(settings, job.tenant_id, f"{job.name}:{d.name}", d, steps))


def inside(session: Session, settings: Settings, tenant_id: str, directory: Path) -> list[Model]:
    """The tenant's other rows whose folders lie inside `directory` (a job model's adapters, base)."""
    prefix = str(directory.relative_to(settings.data_dir)) + "/"
    rows = session.scalars(select(Model).where(Model.tenant_id == tenant_id, Model.path.startswith(prefix)))
    return list(rows)


def check_no_users(session: Session, settings: Settings, tenant_id: str, model: Model, going: set[str]) -> None:
    """409 `in_use` while an adapter that stays (not in `going`) has `model` as its base."""
    users = []
    for m in session.scalars(select(Model).where(Model.tenant_id == tenant_id, Model.id.not_in(going))):
        d = settings.data_dir / m.path
        if is_adapter(d) and info(d).get("base_id") == model.id:
            users.append(m.id)
    if users:
        raise Conflict(f"model '{model.id}' is the base of adapter(s) {', '.join(users)}", code="in_use")


def named_base(source: Path, given: str) -> str:
    """The base an uploaded adapter names: the `base` form field, else adapter_config.json's
    base_model_name_or_path when it is one of ours (a model, checkpoint or job id); 422 without
    one. app.services.catalog.resolve finds it."""
    ref = given
    if not ref:
        try:
            named = json.loads((source / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            named = None
        ref = named if isinstance(named, str) and named.startswith(("model_", "ckpt_", "job_")) else ""
    if not ref:
        message = "an adapter needs its base model: send `base` (a model id) with the archive"
        raise Invalid(message, [{"loc": "base", "message": message}], code="unsupported_model")
    return ref


def convert_upload(
    settings: Settings, tenant_id: str, source: Path, name: str, base_id: str, base: Path, model_id: str = ""
) -> Path:
    """Check a PEFT adapter against its base (torch: in the import sandbox, app.services.conversion)
    and keep it under the tenant's models as `model_id` (a new id unless given); 422
    `unsupported_model` naming what does not fit. Removes the scratch."""
    from models.errors import AdapterError
    from models.formats.load import load_model
    from models.formats.peft import check_fits, load_adapter

    scratch = next(p for p in (source, *source.parents) if p.name.endswith(".d"))
    model_id = model_id or new_id("model")
    final = settings.models_dir / tenant_id / model_id
    try:
        try:
            loaded = load_adapter(source)
            model, _ = load_model(base)
            check_fits(model, loaded.adapter)
        except AdapterError as exc:
            message = str(exc).replace(str(source) + "/", "").replace(str(source), "(archive)")
            raise from_model_error(exc, "file", message) from None
        final.mkdir(parents=True)
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(source / f, final / f)
        _write_info(final, base_id, base, name=name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def register_upload(session: Session, settings: Settings, tenant_id: str, name: str, final: Path) -> Model:
    model = _row(settings, tenant_id, name, final, 0, model_id=final.name)
    session.add(model)
    return model


def export_peft(directory: Path, out: Path) -> None:
    """An adapter as `peft` loads it (PeftModel.from_pretrained on the base's Hugging Face
    export): its two files, base_model_name_or_path set to the base's id here."""
    out.mkdir(parents=True)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = info(directory).get("base_id")
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
    shutil.copyfile(directory / ADAPTER_WEIGHTS, out / ADAPTER_WEIGHTS)
