"""A job's evaluation report, from its `eval` events: validation loss and task metrics at
the end of each stage and for the final model, the whole history, and sample generations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import Job, JobEvent


@dataclass
class StageEvaluation:
    index: int
    name: str
    step: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # by data name: the newest


@dataclass
class Evaluation:
    job_id: str
    status: str
    model_id: str | None
    stages: list[StageEvaluation]
    final: dict[str, dict[str, float]]  # the final model, by data name
    history: list[dict[str, Any]]  # every measurement: {stage, step, data, metric: value}
    samples: list[dict[str, Any]]  # sample generations: {stage, step, data, task, prompt, reference, prediction}


def report(session: Session, job: Job) -> Evaluation:
    events = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.type == "eval", JobEvent.superseded.is_(False))
        .order_by(JobEvent.seq)
    )
    stages: dict[int, StageEvaluation] = {}
    final: dict[str, dict[str, float]] = {}
    history: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for e in events:
        data = dict(e.data)
        name = str(data.pop("data", "validation"))
        found = data.pop("samples", None) or []
        metrics = {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
        stage = e.stage or None
        history.append({"stage": stage["name"] if stage else None, "step": e.step, "data": name, **metrics})
        if stage is None:
            final[name] = metrics
        else:
            entry = stages.setdefault(stage["index"], StageEvaluation(index=stage["index"], name=stage["name"]))
            entry.step = e.step
            entry.metrics[name] = metrics  # the newest: the stage's closing measurement
        if found:
            where = {"stage": stage["name"] if stage else None, "step": e.step, "data": name}
            if stage is None and samples and samples[0]["stage"] is not None:
                samples = []  # the final model's generations replace the earlier ones
            samples = [s for s in samples if s["data"] != name or s["stage"] != where["stage"]]
            samples += [{**where, **s} for s in found]
    return Evaluation(
        job_id=job.id,
        status=job.status,
        model_id=job.model_id,
        stages=[stages[i] for i in sorted(stages)],
        final=final,
        history=history,
        samples=samples[-12:],
    )
