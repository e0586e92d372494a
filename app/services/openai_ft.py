"""The OpenAI fine-tuning API over Stagecraft's own objects: a "file" is a dataset, a
"fine-tuning job" an ordinary one-stage job (created by jobs.submit, so it is checked, queued,
run, cancelled and listed in /v1/jobs like any other) whose request is kept in `fine_tunes`.

How a request becomes a job spec (docs/api.md, "OpenAI fine-tuning API"):

    method.type               -> supervised (the default): a `finetune` stage, cross-entropy;
                                 dpo: a `preference` stage, loss {type: dpo, beta}, the
                                 reference a frozen copy of the base
    model                     -> model.init_from.model (a model id, checkpoint id, or the
                                 id of a succeeded job: its model)
    training_file             -> data.train (validation_fraction 0: every record trains);
                                 supervised records for supervised, preference records for dpo
    validation_file           -> data.validation (validation_fraction 0.5: the held-out half
                                 is measured on the final model)
    n_epochs (auto: 3)        -> steps = n_epochs x ceil(records / batch_size)
    batch_size (auto: min(16, records))
    learning_rate_multiplier  -> AdamW lr = multiplier x BASE_LR (auto: 1.0), linear decay
    beta (dpo; auto: 0.1)     -> loss.beta
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
AUTO_BETA = 0.1  # the DPO paper's and TRL's default
Auto = int | float | str  # "auto" or a number
# method type -> the dataset kind its training and validation files must be, and its stage type
METHODS = {"supervised": "records", "dpo": "preference"}
STAGE_TYPES = {"supervised": "finetune", "dpo": "preference"}
WHAT = {
    "records": "supervised records (chat messages or prompt/completion)",
    "preference": "preference records ({input, preferred_output, non_preferred_output} or {prompt, chosen, rejected})",
    "text": "a text corpus",
}


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
    method: str = "supervised"  # a key of METHODS


def method_of(job: Job) -> str:
    """The method type a fine-tuning job was made with, read off its one stage."""
    stages = job.spec.get("stages") or [{}]
    return "dpo" if stages[0].get("type") == "preference" else "supervised"


def _file(session: Session, tenant_id: str, file_id: str, param: str, method: str) -> Dataset:
    try:
        ds = datasets.get(session, tenant_id, file_id)
    except NotFound:
        raise bad_param(param, f"no file '{file_id}'", "invalid_file") from None
    want = METHODS[method]
    if ds.kind != want:
        got = WHAT.get(ds.kind, f"a '{ds.kind}' dataset")
        hint = next((f": use method type '{m}' for it" for m, kind in METHODS.items() if kind == ds.kind), "")
        raise bad_param(param, f"'{file_id}' holds {got}; method '{method}' needs {WHAT[want]}{hint}", "invalid_file")
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


def resolve(hyper: dict[str, Auto], records: int, method: str = "supervised") -> dict[str, Any]:
    """The hyperparameters with every "auto" replaced by the value used (dpo's `beta` too)."""
    batch = hyper.get("batch_size", "auto")
    epochs = hyper.get("n_epochs", "auto")
    mult = hyper.get("learning_rate_multiplier", "auto")
    resolved: dict[str, Any] = {
        "batch_size": min(AUTO_BATCH, records) if batch == "auto" else int(batch),
        "n_epochs": AUTO_EPOCHS if epochs == "auto" else int(epochs),
        "learning_rate_multiplier": 1.0 if mult == "auto" else float(mult),
    }
    if method == "dpo":
        beta = hyper.get("beta", "auto")
        resolved["beta"] = AUTO_BETA if beta == "auto" else float(beta)
    return resolved


def build_spec(req: Request, base: str, records: int, hyper: dict[str, Any], seed: int) -> dict[str, Any]:
    per_epoch = math.ceil(records / hyper["batch_size"])
    data = {"train": {"dataset": req.training_file, "validation_fraction": 0.0}}
    if req.validation_file:
        data["validation"] = {"dataset": req.validation_file, "validation_fraction": 0.5}
    stage: dict[str, Any] = {
        "type": STAGE_TYPES[req.method],
        "name": "dpo" if req.method == "dpo" else "fine-tune",
        "data": "train",
        "steps": hyper["n_epochs"] * per_epoch,
        "batch_size": hyper["batch_size"],
        # dpo: the reference is left at its default, a frozen copy of the base (`init_from`)
        "loss": {"type": "dpo", "beta": hyper["beta"]} if req.method == "dpo" else {"type": "cross_entropy"},
        "optimizer": {"type": "adamw", "lr": BASE_LR * hyper["learning_rate_multiplier"]},
        "schedule": {"type": "linear"},
        "grad_clip": 1.0,
    }
    # preference data is measured by its loss (and the held-out preference accuracy the run
    # reports for preference data); perplexity is a supervised measure
    metrics = ["loss"] if req.method == "dpo" else ["loss", "perplexity"]
    return {
        "name": (req.suffix or f"ft-{req.model}")[:100],
        "seed": seed,
        "model": {"init_from": {"model": base}},
        "data": data,
        "stages": [stage],
        "evaluation": {"every_steps": per_epoch, "metrics": metrics, "max_samples": 0},
        "checkpointing": {"every_steps": per_epoch, "keep_last": KEEP_CHECKPOINTS},
    }


SPEC_PARAMS = {  # where a spec error lands in the request
    "model.init_from.model": "model",
    "data.train.dataset": "training_file",
    "data.validation.dataset": "validation_file",
    "stages.0.data": "training_file",
    "stages.0.batch_size": "hyperparameters.batch_size",
    "stages.0.steps": "hyperparameters.n_epochs",
    "stages.0.optimizer.lr": "hyperparameters.learning_rate_multiplier",
    "stages.0.loss.beta": "method.dpo.hyperparameters.beta",
    "seed": "seed",
    "name": "suffix",
}


def _param(loc: Any, method: str) -> Any:
    """The request parameter a spec error's loc stands for (the loc itself if none does)."""
    param = SPEC_PARAMS.get(str(loc), loc)
    if method == "dpo" and isinstance(param, str) and param.startswith("hyperparameters."):
        return f"method.dpo.{param}"
    return param


def create(
    session: Session, settings: Settings, tenant_id: str, req: Request, idempotency_key: str | None
) -> tuple[Job, FineTune]:
    """Check the files, build the spec and submit it (jobs.submit: every check a job gets)."""
    check_id(req.model, "model", "model", "ckpt", "job", code="model_not_found")
    train = _file(session, tenant_id, req.training_file, "training_file", req.method)
    if req.validation_file:
        _file(session, tenant_id, req.validation_file, "validation_file", req.method)
    base = _base_model(session, tenant_id, req.model)
    hyper = resolve(req.hyperparameters, train.num_records, req.method)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    spec = build_spec(req, base, train.num_records, hyper, seed)
    try:
        job, created = jobs.submit(session, settings, tenant_id, spec, idempotency_key)
    except Invalid as exc:
        details = [{**d, "loc": _param(d.get("loc"), req.method)} for d in exc.details]
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
