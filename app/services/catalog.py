"""The model catalogue: finished models (one per succeeded job, or uploaded) and checkpoints,
as rows and as directories.

Listing reads model configs as plain JSON; torch is needed only where a checkpoint is
exported as a model directory (for `init_from` or serving it): in the API process that
runs on the inference thread (app.serving), so one export at a time by construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, NotFound
from app.services import adapters, artifacts
from app.services.names import is_id
from app.services.pagination import page
from app.storage import get_store
from app.tables import Checkpoint, Job, Model, new_id
from models.families import DEFAULT
from models.formats.layout import tensor_shapes
from models.spec import parse_spec

CONFIG_FILE = "config.json"  # models.formats.layout.CONFIG_FILE, without importing torch
EXPORTS = "exports"  # under a job's directory: checkpoints exported as model directories
ARCHITECTURE = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")


@dataclass(frozen=True)
class CheckpointRef:
    id: str
    step: int
    stage: str | None


@dataclass
class ModelInfo:
    """A model row with what a reader wants beside it."""

    id: str
    name: str
    job_id: str | None
    source: str  # job | upload
    parameters: int
    steps: int
    evaluation: dict[str, Any]
    created_at: datetime
    created: int  # created_at in Unix seconds
    config: dict[str, int]  # ARCHITECTURE
    stages: list[dict[str, Any]] = field(default_factory=list)  # name, type, steps
    checkpoints: list[CheckpointRef] = field(default_factory=list)
    base: str | None = None  # an adapter's base model id; None for a model
    adapter: dict[str, Any] | None = None  # rank, alpha, modules (an adapter's)


def register(session: Session, settings: Settings, job: Job, model_dir: Path, evaluation: dict[str, Any]) -> Model:
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = Model(
        id=new_id("model"),
        tenant_id=job.tenant_id,
        job_id=job.id,
        name=job.name,
        path=str(model_dir.relative_to(settings.data_dir)),
        parameters=int(config.get("parameters", 0)),
        steps=int(config.get("steps", 0)),
        evaluation=evaluation,
    )
    session.add(model)
    return model


def register_adapters(session: Session, settings: Settings, job: Job, directory: Path) -> None:
    """Rows for the LoRA adapters a finished job trained (app.services.adapters), beside its model."""
    base = (job.spec["model"].get("init_from") or {}).get("model")
    base_path = model_dir(session, settings, job.tenant_id, base) if base else None
    adapters.register_job(session, settings, job, directory, base_path)


def get(session: Session, tenant_id: str, model_id: str) -> Model:
    model = session.get(Model, model_id) if is_id(model_id) else None
    if model is None or model.tenant_id != tenant_id:
        raise NotFound(f"no model '{model_id}'")
    return model


def list_page(session: Session, tenant_id: str, limit: int, after: str | None) -> tuple[list[Model], bool]:
    return page(session, select(Model).where(Model.tenant_id == tenant_id), Model.id, limit, after)


def find(session: Session, settings: Settings, tenant_id: str, ref: str) -> ModelInfo | Checkpoint:
    """A model id (described), a checkpoint id (its row) or a job id (its final model, as the
    serving routes take it: 409 until the job has succeeded); 404 if the tenant has none."""
    if ref.startswith("job_"):
        ref = _job_model(session, tenant_id, ref)
    if ref.startswith("ckpt_"):
        found = checkpoint_of(session, tenant_id, ref)
        if found is None:
            raise NotFound(f"no model or checkpoint '{ref}'")
        return found[0]
    return describe(session, settings, get(session, tenant_id, ref))


def describe(session: Session, settings: Settings, m: Model) -> ModelInfo:
    """The row, with its architecture, its job's stages and the checkpoints servable beside it."""
    if artifacts.is_adapter(settings, m.path):
        a = adapters.describe(artifacts.local_model(settings, m.path))  # an adapter is small; its base is not read
        src = "job" if a["job_id"] else "upload"
        config = {k: a["config"][k] for k in ARCHITECTURE if k in a["config"]}
        return ModelInfo(m.id, m.name, a["job_id"], src, m.parameters, m.steps, m.evaluation, m.created_at,
                         int(m.created_at.timestamp()), config, base=a["base"], adapter=a["adapter"])  # fmt: skip
    record = artifacts.read_json(settings, m.path, CONFIG_FILE) or {}
    config = record.get(record.get("arch", "gpt"), {})
    stages: list[dict[str, Any]] = []
    ckpts: list[CheckpointRef] = []
    if m.job_id is not None:
        job = session.get(Job, m.job_id)
        for s in parse_spec(job.spec).stages if job is not None else []:
            stages.append({"name": s.name, "type": s.type, "steps": s.steps})
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == m.job_id).order_by(Checkpoint.step))
        ckpts = [CheckpointRef(id=c.id, step=c.step, stage=c.stage_name) for c in rows]
    config = {k: config[k] for k in ARCHITECTURE if k in config}
    return ModelInfo(
        id=m.id,
        name=m.name,
        job_id=m.job_id,
        source="job" if m.job_id else "upload",
        parameters=m.parameters,
        steps=m.steps,
        evaluation=m.evaluation,
        created_at=m.created_at,
        created=int(m.created_at.timestamp()),
        config=config,
        stages=stages,
        checkpoints=ckpts,
    )


def register_upload(session: Session, settings: Settings, tenant_id: str, name: str, model_dir: Path) -> Model:
    """A model directory (already converted to ours) under the data directory, as a model row."""
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = Model(
        id=model_dir.name,
        tenant_id=tenant_id,
        job_id=None,
        name=name,
        path=str(model_dir.relative_to(settings.data_dir)),
        parameters=int(config.get("parameters", 0)),
        steps=0,
        evaluation={},
    )
    session.add(model)
    return model


def servable(session: Session, settings: Settings, tenant_id: str, ref: str) -> Path:
    """The model directory to serve for a model id, checkpoint id or job id (its final model):
    404 if unknown to this tenant, 409 if the job has not succeeded (yet)."""
    return resolve(session, settings, tenant_id, ref)[1]


def resolve(session: Session, settings: Settings, tenant_id: str, ref: str) -> tuple[str, Path]:
    """`servable`'s directory, with the model or checkpoint id it is (a job's model id for a job id)."""
    if ref.startswith("job_"):
        ref = _job_model(session, tenant_id, ref)
    found = model_dir(session, settings, tenant_id, ref)
    if found is None:
        raise NotFound(f"no model '{ref}'")
    return ref, found


def serving(session: Session, settings: Settings, tenant_id: str, ref: str) -> tuple[Path, Path | None]:
    """What serves `ref`: (the model folder, None), or for an adapter (its base's folder, its
    own), so adapters of one base share the base's loaded weights."""
    found = servable(session, settings, tenant_id, ref)
    if not adapters.is_adapter(found):
        return found, None
    base = adapters.base_dir(found)
    if base is None or not (base.is_dir() or base.is_file()):
        raise NotFound(f"the base model of adapter '{ref}' is gone")
    return base, found


def _job_model(session: Session, tenant_id: str, job_id: str) -> str:
    """The model id of a succeeded job: 404 if unknown to this tenant, 409 until it has succeeded."""
    job = session.get(Job, job_id) if is_id(job_id) else None
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no model '{job_id}'")
    if job.status != "succeeded" or job.model_id is None:
        raise Conflict(
            f"job '{job_id}' is {job.status}: its model exists once the job has succeeded "
            "(its checkpoints can be served meanwhile)",
            code="model_not_ready",
        )
    return job.model_id


def checkpoint_of(session: Session, tenant_id: str, ckpt_id: str) -> tuple[Checkpoint, Job] | None:
    query = select(Checkpoint, Job).join(Job, Job.id == Checkpoint.job_id).where(Checkpoint.id == ckpt_id)
    row = session.execute(query).first() if is_id(ckpt_id) else None
    if row is None or row[1].tenant_id != tenant_id:
        return None
    return row[0], row[1]


def _architecture(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """The model shape a job trains: its spec's, or (with init_from) its base model's."""
    base = (job.spec["model"].get("init_from") or {}).get("model")
    found = base_config(session, settings, job.tenant_id, base) if base else None
    return {**job.spec["model"], **(found or {}), "dropout": job.spec["model"]["dropout"]}


def checkpoint_config(session: Session, settings: Settings, ckpt: Checkpoint, job: Job) -> dict[str, Any]:
    """The model config of a checkpoint, its `arch` among the fields: the one its state.json
    records, or (older GPT checkpoints) its job's model shape with the vocabulary from the tensors."""
    state = artifacts.read_json(settings, ckpt.path, "state.json") or {}
    if "model" in state:
        return _fields(state["model"])
    shapes = tensor_shapes(get_store(settings).get(ckpt.path) / "tensors.safetensors")
    m = _architecture(session, settings, job)
    vocab = shapes["model/transformer.wte.weight"][0]
    return {
        "arch": "gpt",
        "vocab_size": vocab,
        "block_size": m["block_size"],
        "n_layer": m["n_layer"],
        "n_head": m["n_head"],
        "n_embd": m["n_embd"],
        "dropout": m["dropout"],
    }


def base_config(session: Session, settings: Settings, tenant_id: str, ref: str) -> dict[str, Any] | None:
    """The config (with its `arch`) of a model or checkpoint id usable as `init_from`, or None if unknown."""
    if ref.startswith("ckpt_"):
        found = checkpoint_of(session, tenant_id, ref)
        if found is None or not get_store(settings).exists(found[0].path):
            return None
        return checkpoint_config(session, settings, *found)
    model = session.get(Model, ref) if is_id(ref) else None
    if model is None or model.tenant_id != tenant_id:
        return None
    config = artifacts.model_config(settings, model.path)  # init_from an adapter: its base's shape (merged with it)
    return _fields(config) if config is not None else None


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded model (config.json, state.json's `model`) as its config's fields and `arch`."""
    arch = str(record.get("arch", DEFAULT))
    return {"arch": arch, **record[arch]}


def model_dir(session: Session, settings: Settings, tenant_id: str, ref: str) -> Path | None:
    """A loadable model directory for a model or checkpoint id (exporting a checkpoint once)."""
    if not ref.startswith("ckpt_"):
        model = session.get(Model, ref) if is_id(ref) else None
        return None if model is None or model.tenant_id != tenant_id else artifacts.local_model(settings, model.path)
    found = checkpoint_of(session, tenant_id, ref)
    if found is None:
        return None
    ckpt, job = found
    out = settings.jobs_dir / job.id / EXPORTS / ckpt.id
    if not (out / CONFIG_FILE).exists():  # the first request for it exports it (torch: see the module doc)
        store = get_store(settings)
        tokenizer = settings.jobs_dir / job.id / "tokenizer"
        if store.remote and store.exists(f"jobs/{job.id}/tokenizer"):
            store.get(f"jobs/{job.id}/tokenizer")
        base = (job.spec["model"].get("init_from") or {}).get("model")
        base_dir = model_dir(session, settings, tenant_id, base) if base else None
        if not tokenizer.is_dir() and base_dir is not None:  # a job from init_from has its base's tokenizer
            tokenizer = (adapters.base_dir(base_dir) or base_dir) if adapters.is_adapter(base_dir) else base_dir
        m = _architecture(session, settings, job)
        _export_checkpoint(store.get(ckpt.path), tokenizer, job, m, out, base_dir)
    return out


def _export_checkpoint(
    ckpt_dir: Path, tokenizer_dir: Path, job: Job, shape: dict[str, Any], out: Path, base_dir: Path | None
) -> None:
    from models.training.export import save_checkpoint_model

    save_checkpoint_model(ckpt_dir, tokenizer_dir, out, {"name": job.name}, parse_spec(job.spec), base_dir, shape)
