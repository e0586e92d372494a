"""Typed result objects: pydantic models mirroring the API's JSON.

Every model accepts fields it does not declare (kept as extra attributes), so a newer
server that adds fields never breaks an older SDK. Status and kind fields are plain
strings for the same reason; the values known today are listed in each docstring.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class APIObject(BaseModel):
    """Base of every result: tolerant of added fields, with the raw JSON at hand."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Dataset(APIObject):
    """An uploaded file. `kind`: "text" (a corpus), "records" (supervised records) or
    "preference" (prompt/chosen/rejected records, for a `preference` stage)."""

    id: str
    object: str = "dataset"
    name: str
    kind: str
    format: str
    num_records: int
    bytes: int
    sha256: str | None = None
    created_at: datetime


class Deleted(APIObject):
    id: str
    object: str = "dataset"
    deleted: bool = True


class StageRef(APIObject):
    index: int
    name: str


class JobError(APIObject):
    """`code`: user_error | system_error | worker_lost | time_limit."""

    code: str
    message: str


class Job(APIObject):
    """`status`: validating, queued, running, cancelling, succeeded, failed, cancelled."""

    id: str
    object: str = "job"
    name: str
    status: str
    stage: StageRef | None = None
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    error: JobError | None = None
    model_id: str | None = None
    estimates: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class Event(APIObject):
    """`type`: job.queued, job.started, job.restarted, stage.started, train.step, eval,
    checkpoint.saved, stage.completed, job.succeeded, job.failed, job.cancelled."""

    seq: int
    type: str
    time: datetime
    stage: StageRef | None = None
    step: int = 0
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS


class Estimates(APIObject):
    parameters: int
    tokens: int
    total_steps: int
    flops: float


class Validation(APIObject):
    valid: bool
    estimates: Estimates


class Metrics(APIObject):
    """`series`: name -> [(step, value), ...], e.g. train.loss, eval.pairs.loss."""

    series: dict[str, list[tuple[int, float]]]


class Checkpoint(APIObject):
    id: str
    object: str = "checkpoint"
    job_id: str
    step: int
    stage: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class StageEvaluation(APIObject):
    index: int
    name: str
    step: int = 0
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)


class Evaluation(APIObject):
    object: str = "evaluation"
    job_id: str
    status: str
    model_id: str | None = None
    stages: list[StageEvaluation] = Field(default_factory=list)
    final: dict[str, dict[str, float]] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    samples: list[dict[str, Any]] = Field(default_factory=list)


class ModelCheckpoint(APIObject):
    id: str
    step: int
    stage: str | None = None


class Model(APIObject):
    """A finished or uploaded model. `source`: "job" or "upload"."""

    id: str
    object: str = "model"
    name: str
    job_id: str | None = None
    source: str
    parameters: int
    steps: int
    evaluation: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    created: int | None = None
    owned_by: str = "stagecraft"
    config: dict[str, int] = Field(default_factory=dict)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    checkpoints: list[ModelCheckpoint] = Field(default_factory=list)


class Usage(APIObject):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Generation(APIObject):
    """`finish_reason`: "stop" (end token or a stop string) or "length"."""

    id: str
    object: str = "generation"
    model: str
    text: str
    finish_reason: str
    usage: Usage


class Translation(APIObject):
    translation: str
    model: str
    finish_reason: str
    usage: Usage


class Answer(APIObject):
    answer: str
    model: str
    finish_reason: str
    usage: Usage


class Summary(APIObject):
    summary: str
    model: str
    finish_reason: str
    usage: Usage
