"""Metric series and checkpoint rows, derived from a job's events as a worker writes them.

Series names: `train.<field>` for training steps (loss, lr, grad_norm, tokens_per_s; a
preference stage's rewards and log-probabilities as TRL names them: `train.rewards/chosen`,
...) and `eval.<data>.<metric>` for evaluations. After a restart from a checkpoint the steps past
it run again, so their old points are dropped first: a series is the run that counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.storage import get_store
from app.tables import Checkpoint, Metric, new_id
from models.events import Event

PREFERENCE_FIELDS = (  # a preference stage's train.step fields, named as TRL logs them
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
TRAIN_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s", *PREFERENCE_FIELDS)


def points(event: Event) -> list[tuple[str, float]]:
    data, kind = event["data"], event["type"]
    if kind == "train.step":
        return [(f"train.{k}", float(data[k])) for k in TRAIN_FIELDS if isinstance(data.get(k), int | float)]
    if kind == "eval":
        prefix = f"eval.{data.get('data', 'data')}."
        return [(prefix + k, float(v)) for k, v in data.items() if isinstance(v, int | float) and k != "data"]
    return []


def _insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def record(
    session: Session, settings: Settings, job_id: str, batch: list[Event], recent: dict[str, float]
) -> dict[str, str]:
    """Metrics and checkpoint rows for a batch of events (in order); returns {checkpoint path: id}.

    `recent` carries the newest value of each series from batch to batch: a checkpoint row
    records them.
    """
    rows: dict[tuple[str, int], float] = {}
    created: dict[str, str] = {}
    for e in batch:
        if e["type"] == "job.restarted":
            if rows:
                _insert_ignoring_duplicates(session, Metric, _metric_rows(job_id, rows))
                rows.clear()
            session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > e["data"]["from_step"]))
        for name, value in points(e):
            rows[(name, e["step"])] = value
            recent[name] = value
        if e["type"] == "checkpoint.saved":
            path = Path(e["data"]["path"])
            ckpt_id = new_id("ckpt")
            created[str(path)] = ckpt_id
            stage = e["stage"]
            row = {
                "id": ckpt_id,
                "job_id": job_id,
                "step": e["step"],
                "stage_name": stage["name"] if stage else None,
                "path": str(path.relative_to(settings.data_dir)),
                "metrics": dict(recent),
            }
            _insert_ignoring_duplicates(session, Checkpoint, [row])
    _insert_ignoring_duplicates(session, Metric, _metric_rows(job_id, rows))
    return created


def prune_checkpoints(session: Session, settings: Settings, job_id: str, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints (`checkpointing.keep_last`): the others' rows and
    their objects in the store go (the pipeline has already removed its local copies)."""
    store = get_store(settings)
    for ckpt in checkpoints(session, job_id)[:-keep_last]:
        store.delete(ckpt.path)
        session.delete(ckpt)


def _metric_rows(job_id: str, rows: dict[tuple[str, int], float]) -> list[dict[str, Any]]:
    return [{"job_id": job_id, "name": n, "step": s, "value": v} for (n, s), v in rows.items()]


def series(session: Session, job_id: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    stmt = select(Metric.name, Metric.step, Metric.value).where(Metric.job_id == job_id)
    for name, step, value in session.execute(stmt.order_by(Metric.name, Metric.step)):
        out.setdefault(name, []).append((step, value))
    return out


def checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))
