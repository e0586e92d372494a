"""Stagecraft rows as OpenAI's file and fine-tuning objects (unix timestamps, `object` fields),
for routes/files.py and routes/fine_tuning.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.services.metrics import PREFERENCE_FIELDS
from app.services.openai_ft import event_id, method_of
from app.tables import Checkpoint, Dataset, FineTune, Job, JobEvent

Obj = dict[str, Any]
# OpenAI has no `cancelling`: a cancel is final once accepted, so a job stopping reads as cancelled.
STATUSES = {"queued": "queued", "running": "running", "cancelling": "cancelled"}


def unix(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp())


def listing(data: list[Obj], has_more: bool, **extra: Any) -> Obj:
    out: Obj = {"object": "list", "data": data, "has_more": has_more}
    if extra:
        out.update(extra)
    return out


def file(ds: Dataset) -> Obj:
    return {
        "id": ds.id,
        "object": "file",
        "bytes": ds.bytes,
        "created_at": unix(ds.created_at),
        "filename": ds.name,
        "purpose": "fine-tune",
        "status": "processed",  # validated whole before it is kept
        "status_details": None,
        "expires_at": None,
    }


def job(j: Job, ft: FineTune) -> Obj:
    hyper = ft.hyperparameters  # dpo's `beta` too
    method = method_of(j)
    finished = j.status in ("succeeded", "failed", "cancelled")
    tokens = int(j.estimates.get("tokens", 0) * j.step / j.total_steps) if finished and j.total_steps else None
    error = None
    if j.status == "failed":
        error = {"code": j.error_code, "message": j.error_message or "", "param": None}
    return {
        "id": j.id,
        "object": "fine_tuning.job",
        "created_at": unix(j.created_at),
        "finished_at": unix(j.finished_at),
        "model": ft.model,
        "fine_tuned_model": j.model_id,
        "organization_id": j.tenant_id,
        "status": STATUSES.get(j.status, j.status),
        "training_file": ft.training_file,
        "validation_file": ft.validation_file,
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"},  # the ones every method has
        "method": {"type": method, method: {"hyperparameters": hyper}},
        "seed": j.spec.get("seed"),
        "trained_tokens": tokens,
        "error": error,
        "result_files": [],
        "estimated_finish": None,
        "integrations": [],
        "metadata": ft.user_metadata or None,
        "user_provided_suffix": ft.suffix,
        "stagecraft_status": j.status,
    }


def _described(e: JobEvent, total_steps: int) -> tuple[str, str, str, Obj]:
    """(level, type, message, data) of a Stagecraft event, in OpenAI's words."""
    d = e.data
    match e.type:
        case "job.queued":
            reason = d.get("reason")
            return "info", "message", f"Job queued again: {reason}" if reason else "Fine-tuning job queued", {}
        case "job.started":
            return "info", "message", f"Fine-tuning job started (attempt {d.get('attempt', 1)})", {}
        case "stage.started":
            return "info", "message", f"Training started: {d.get('steps', total_steps)} steps", {}
        case "train.step":
            data = {"step": e.step, "total_steps": total_steps, "train_loss": d.get("loss"),
                    "learning_rate": d.get("lr")}  # fmt: skip
            data |= {k: d[k] for k in PREFERENCE_FIELDS if k in d}  # a dpo step's rewards and log-probabilities
            return "info", "metrics", f"Step {e.step}/{total_steps}: training loss={d.get('loss', 0.0):.4f}", data
        case "eval":
            data = {"step": e.step, "valid_loss": d.get("loss"), "data": d.get("data")}
            return "info", "metrics", f"Step {e.step}: validation loss={d.get('loss', 0.0):.4f} ({d.get('data')})", data
        case "checkpoint.saved":
            return "info", "message", f"Checkpoint created at step {e.step}", {"checkpoint": d.get("checkpoint_id")}
        case "stage.completed":
            return "info", "message", f"Training completed: {d.get('steps', e.step)} steps", {}
        case "job.succeeded":
            model = d.get("model_id")
            return (
                "info",
                "message",
                f"The job has successfully completed; fine-tuned model: {model}",
                {"fine_tuned_model": model},
            )
        case "job.failed":
            return "error", "message", f"The job failed: {d.get('message', '')}", {"code": d.get("code")}
        case "job.cancelled":
            return "info", "message", f"The job was cancelled ({d.get('reason', 'by request')})", {}
    return "info", "message", e.type, dict(d)


def event(e: JobEvent, total_steps: int) -> Obj:
    level, kind, message, data = _described(e, total_steps)
    return {
        "id": event_id(e.job_id, e.seq),
        "object": "fine_tuning.job.event",
        "created_at": unix(e.time),
        "level": level,
        "message": message,
        "type": kind,
        "data": data,
    }


def checkpoint(c: Checkpoint) -> Obj:
    m = c.metrics or {}
    valid = next((v for k, v in m.items() if k.startswith("eval.") and k.endswith(".loss")), None)
    return {
        "id": c.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": unix(c.created_at),
        "fine_tuned_model_checkpoint": c.id,  # servable and usable as `model`, like a model id
        "fine_tuning_job_id": c.job_id,
        "step_number": c.step,
        "metrics": {"step": c.step, "train_loss": m.get("train.loss"), "valid_loss": valid},
    }
