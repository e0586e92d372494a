"""Rows and service results as the API's response schemas: the one place either becomes JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import Row

from app.api.schemas import (
    CheckpointOut,
    DatasetOut,
    Estimates,
    EvaluationOut,
    EventOut,
    JobOut,
    ModelOut,
    Page,
    T,
)
from app.services import estimates, evaluation
from app.services.catalog import ModelInfo
from app.tables import Checkpoint, Dataset, Job, JobEvent


def page(data: list[T], has_more: bool, cursor: str | None) -> Page[T]:
    """A page of results; `cursor` (the last id) is kept only when more follow."""
    return Page(data=data, has_more=has_more, next_cursor=cursor if has_more else None)


def dataset(ds: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(ds, from_attributes=True)


def job(j: Job | Row[Any], waiting: str | None = None) -> JobOut:
    stage = None if j.stage_index is None else {"index": j.stage_index, "name": j.stage_name}
    error = None if j.error_code is None else {"code": j.error_code, "message": j.error_message or ""}
    return JobOut(
        id=j.id,
        name=j.name,
        status=j.status,  # type: ignore[arg-type]
        stage=stage,  # type: ignore[arg-type]
        step=j.step,
        total_steps=j.total_steps,
        progress=round(min(1.0, j.step / j.total_steps), 4) if j.total_steps else 0.0,
        created_at=j.created_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
        attempt=j.attempt,
        error=error,  # type: ignore[arg-type]
        model_id=j.model_id,
        estimates=j.estimates,
        spec=j.spec,
        waiting=waiting,
    )


def event(e: JobEvent) -> EventOut:
    return EventOut.model_validate(e, from_attributes=True)


def checkpoint(c: Checkpoint) -> CheckpointOut:
    return CheckpointOut(
        id=c.id, job_id=c.job_id, step=c.step, stage=c.stage_name, metrics=c.metrics, created_at=c.created_at
    )


def model(info: ModelInfo) -> ModelOut:
    return ModelOut.model_validate(asdict(info))


def estimate(est: estimates.Estimates) -> Estimates:
    return Estimates(**asdict(est))


def evaluation_report(report: evaluation.Evaluation) -> EvaluationOut:
    return EvaluationOut.model_validate(asdict(report))
