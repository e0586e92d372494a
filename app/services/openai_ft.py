"""The OpenAI fine-tuning API over Stagecraft's own objects: a "file" is a dataset, a
"fine-tuning job" an ordinary finetune job (created by jobs.submit, so it is checked, queued,
run, cancelled and listed in /v1/jobs like any other) whose request is kept in `fine_tunes`.

How a request becomes a job spec (docs/api.md, "OpenAI fine-tuning API"):

    model                     -> model.init_from.model (a model id, checkpoint id, or the
                                 id of a succeeded job: its model)
    training_file             -> data.train (validation_fraction 0: every record trains)
    validation_file           -> data.validation (validation_fraction 0.5: the held-out half
                                 is measured on the final model)
    n_epochs (auto: 3)        -> steps = n_epochs x ceil(records / batch_size)
    batch_size (auto: min(16, records))
    learning_rate_multiplier  -> AdamW lr = multiplier x BASE_LR (auto: 1.0), linear decay
    seed (default: random)    -> seed;  suffix -> the job's (and model's) name
    checkpoints and evaluations once per epoch; the last 3 checkpoints are kept.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Invalid, NotFound
from app.services import datasets, jobs, lifecycle
from app.services.names import check_id, is_id
from app.services.pagination import page
from app.tables import Checkpoint, Dataset, FineTune, Job, JobEvent

BASE_LR = 5e-4  # AdamW, the fine-tuning rate of the example spec
AUTO_EPOCHS = 3
AUTO_BATCH = 16  # the spec's default batch size, capped at the number of records
KEEP_CHECKPOINTS = 3
Auto = int | float | str  # "auto" or a number


def bad_param(param: str, message: str, code: str = "unsupported_parameter") -> Invalid:
    """A 422 whose `param` (app/api/errors.py) is the request parameter at fault."""
    return Invalid(f"{param}: {message}", [{"loc": param, "message": message}], code=code)


@dataclass(frozen=True)
class Request:
    """A fine-tuning request, checked for shape by the route (app/api/routes/fine_tuning.py)."""

    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Auto]
    suffix: str | None
    seed: int | None
    metadata: dict[str, str]


def _file(session: Session, tenant_id: str, file_id: str, param: str) -> Dataset:
    try:
        ds = datasets.get(session, tenant_id, file_id)
    except NotFound:
        raise bad_param(param, f"no file '{file_id}'", "invalid_file") from None
    if ds.kind != "records":
        raise bad_param(
            param, f"'{file_id}' is a text corpus; fine-tuning needs JSONL records (messages or prompt/completion)",
            "invalid_file",
        )  # fmt: skip
    return ds


def _base_model(session: Session, tenant_id: str, model: str) -> str:
    """A job id stands for its model once it has succeeded; other ids go to the spec as they are."""
    if not model.startswith("job_"):
        return model
    try:
        job = jobs.get(session, tenant_id, model)
    except NotFound:
        raise bad_param("model", f"no model '{model}'", "model_not_found") from None
    if job.model_id is None:
        raise bad_param("model", f"job '{model}' is {job.status}: it has no model yet", "model_not_ready")
    return job.model_id


def resolve(hyper: dict[str, Auto], records: int) -> dict[str, Any]:
    """The hyperparameters with every "auto" replaced by the value used."""
    batch = hyper.get("batch_size", "auto")
    epochs = hyper.get("n_epochs", "auto")
    mult = hyper.get("learning_rate_multiplier", "auto")
    return {
        "batch_size": min(AUTO_BATCH, records) if batch == "auto" else int(batch),
        "n_epochs": AUTO_EPOCHS if epochs == "auto" else int(epochs),
        "learning_rate_multiplier": 1.0 if mult == "auto" else float(mult),
    }


def build_spec(req: Request, base: str, records: int, hyper: dict[str, Any], seed: int) -> dict[str, Any]:
    per_epoch = math.ceil(records / hyper["batch_size"])
    data = {"train": {"dataset": req.training_file, "validation_fraction": 0.0}}
    if req.validation_file:
        data["validation"] = {"dataset": req.validation_file, "validation_fraction": 0.5}
    stage = {
        "type": "finetune",
        "name": "fine-tune",
        "data": "train",
        "steps": hyper["n_epochs"] * per_epoch,
        "batch_size": hyper["batch_size"],
        "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "adamw", "lr": BASE_LR * hyper["learning_rate_multiplier"]},
        "schedule": {"type": "linear"},
        "grad_clip": 1.0,
    }
    return {
        "name": (req.suffix or f"ft-{req.model}")[:100],
        "seed": seed,
        "model": {"init_from": {"model": base}},
        "data": data,
        "stages": [stage],
        "evaluation": {"every_steps": per_epoch, "metrics": ["loss", "perplexity"], "max_samples": 0},
        "checkpointing": {"every_steps": per_epoch, "keep_last": KEEP_CHECKPOINTS},
    }


SPEC_PARAMS = {  # where a spec error lands in the request
    "model.init_from.model": "model",
    "data.train.dataset": "training_file",
    "data.validation.dataset": "validation_file",
    "stages.0.batch_size": "hyperparameters.batch_size",
    "stages.0.steps": "hyperparameters.n_epochs",
    "stages.0.optimizer.lr": "hyperparameters.learning_rate_multiplier",
    "seed": "seed",
    "name": "suffix",
}


def create(
    session: Session, settings: Settings, tenant_id: str, req: Request, idempotency_key: str | None
) -> tuple[Job, FineTune]:
    """Check the files, build the spec and submit it (jobs.submit: every check a job gets)."""
    check_id(req.model, "model", "model", "ckpt", "job", code="model_not_found")
    train = _file(session, tenant_id, req.training_file, "training_file")
    if req.validation_file:
        _file(session, tenant_id, req.validation_file, "validation_file")
    base = _base_model(session, tenant_id, req.model)
    hyper = resolve(req.hyperparameters, train.num_records)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    spec = build_spec(req, base, train.num_records, hyper, seed)
    try:
        job, created = jobs.submit(session, settings, tenant_id, spec, idempotency_key)
    except Invalid as exc:
        details = [{**d, "loc": SPEC_PARAMS.get(str(d.get("loc")), d.get("loc"))} for d in exc.details]
        raise Invalid(exc.message, details, code=exc.code) from None
    if not created:
        existing = session.get(FineTune, job.id)
        if existing is not None:
            return job, existing
    ft = FineTune(
        job_id=job.id,
        tenant_id=tenant_id,
        model=req.model,
        training_file=req.training_file,
        validation_file=req.validation_file,
        hyperparameters=hyper,
        suffix=req.suffix,
        user_metadata=req.metadata,
    )
    session.add(ft)
    return job, ft


def get(session: Session, tenant_id: str, job_id: str) -> tuple[Job, FineTune]:
    ft = session.get(FineTune, job_id) if is_id(job_id) else None
    if ft is None or ft.tenant_id != tenant_id:
        raise NotFound(f"no fine-tuning job '{job_id}'")
    return jobs.get(session, tenant_id, job_id), ft


def list_page(
    session: Session, tenant_id: str, limit: int, after: str | None
) -> tuple[list[tuple[Job, FineTune]], bool]:
    mine = select(FineTune.job_id).where(FineTune.tenant_id == tenant_id)
    ids, more = page(session, mine, FineTune.job_id, limit, after)
    rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
    fts = {f.job_id: f for f in session.scalars(select(FineTune).where(FineTune.job_id.in_(ids)))}
    return [(rows[i], fts[i]) for i in ids], more


def cancel(session: Session, tenant_id: str, job_id: str) -> tuple[Job, FineTune]:
    get(session, tenant_id, job_id)
    lifecycle.cancel(session, tenant_id, job_id)
    return get(session, tenant_id, job_id)


def event_id(job_id: str, seq: int) -> str:
    return f"ftevent-{job_id}-{seq}"


def events_page(session: Session, job: Job, limit: int, after: str | None) -> tuple[list[JobEvent], bool]:
    """Newest first; `after` is the id of the last event of the previous page."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        prefix, _, seq = after.rpartition("-")
        if prefix != f"ftevent-{job.id}" or not seq.isdigit():
            raise bad_param("after", f"not an event id of this job: '{after}'", "invalid_request")
        stmt = stmt.where(JobEvent.seq < int(seq))
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoints_page(session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Checkpoint], bool]:
    return page(session, select(Checkpoint).where(Checkpoint.job_id == job.id), Checkpoint.id, limit, after)
