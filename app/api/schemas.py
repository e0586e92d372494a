"""Request and response shapes of the native API, for OpenAPI and validation (the OpenAI-
compatible shapes are in routes/openai.py; rows become these in app/api/shape.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.serving.requests import MAX_NEW_TOKENS, MAX_SEED
from app.tables import JobStatus

T = TypeVar("T")


class ErrorBody(BaseModel):
    code: str
    message: str = Field(description="the first problem (with a count when details list more)")
    details: list[dict[str, Any]] = []
    param: str | None = Field(None, description="the one field at fault, when there is one (as OpenAI's errors)")
    type: str = Field("invalid_request_error", description="OpenAI's error type for the status")


class ErrorResponse(BaseModel):
    error: ErrorBody


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    kind: Literal["text", "records", "preference"]
    format: str
    num_records: int
    bytes: int
    sha256: str
    created_at: datetime


class Deleted(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    deleted: Literal[True] = True


class DeletedJob(BaseModel):
    id: str
    object: Literal["job"] = "job"
    deleted: Literal[True] = True


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: Literal[True] = True


class StageRef(BaseModel):
    index: int
    name: str


class JobError(BaseModel):
    code: str = Field(description="user_error | system_error | worker_lost | time_limit")
    message: str


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    name: str
    status: Literal["validating", JobStatus]
    stage: StageRef | None
    step: int
    total_steps: int
    progress: float = Field(description="step / total_steps, 0..1")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    error: JobError | None
    model_id: str | None
    estimates: dict[str, Any]
    spec: dict[str, Any]
    waiting: str | None = Field(
        None, description="why a queued job waits: no running worker offers its resources (docs/scaling.md)"
    )


class EventOut(BaseModel):
    seq: int
    type: str
    time: datetime
    stage: StageRef | None
    step: int
    data: dict[str, Any]


class ServingOut(BaseModel):
    default_precision: str = Field(description="what a request without `precision` is served in")
    precisions: list[str] = Field(description="what a request may ask for in `precision`: fp32, int8, int4, nf4")
    loaded: list[str] = Field(description="the precisions it is loaded in now (in the API process that answered)")
    compiled: bool = Field(description="decode steps run compiled (STAGECRAFT_INFERENCE_COMPILE; docs/api.md)")
    kv_cache: dict[str, str] = Field(
        description="each precision's KV cache element type, fp32 or bf16 (STAGECRAFT_INFERENCE_KV_CACHE; docs/api.md)"
    )
    decode_steps: dict[str, str] = Field(
        description="each loaded precision's decode steps: native (C++ on a CPU; STAGECRAFT_INFERENCE_NATIVE), "
        "compiled or eager (docs/api.md)"
    )


SERVING = "GET /v1/models/{id} only: the precisions it is servable and loaded in"


class CheckpointOut(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    step: int
    stage: str | None
    metrics: dict[str, Any]
    created_at: datetime
    serving: ServingOut | None = Field(default=None, description=SERVING)


class ModelCheckpoint(BaseModel):
    id: str = Field(description="a checkpoint id: servable and usable as init_from, like a model id")
    step: int
    stage: str | None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    job_id: str | None = Field(description="the job that trained it; null for an uploaded model")
    source: Literal["job", "upload"]
    parameters: int
    steps: int
    evaluation: dict[str, Any] = Field(description="final validation metrics by data name")
    created_at: datetime
    created: int = Field(description="created_at in Unix seconds (as OpenAI's model objects)")
    owned_by: str = "stagecraft"
    config: dict[str, int] = Field(description="vocab_size, block_size, n_layer, n_head, n_embd")
    stages: list[dict[str, Any]] = Field(description="the training stages: name, type, steps")
    checkpoints: list[ModelCheckpoint] = Field(description="its job's kept checkpoints, each servable by id")
    base: str | None = Field(
        None, description="for a LoRA adapter: the model it adapts (served on it, not copied); null for a model"
    )
    adapter: dict[str, Any] | None = Field(None, description="for a LoRA adapter: rank, alpha, modules")
    serving: ServingOut | None = Field(None, description=SERVING + " (an adapter: its base's)")


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class MetricsOut(BaseModel):
    series: dict[str, list[tuple[int, float]]]


class Estimates(BaseModel):
    parameters: int
    tokens: int = Field(description="tokens the training steps read (batch × grad_accum × block per step)")
    total_steps: int
    flops: float = Field(description="≈ 6 × parameters × tokens")


class ValidationOut(BaseModel):
    valid: Literal[True] = True
    estimates: Estimates


class StageEvaluation(BaseModel):
    index: int
    name: str
    step: int = 0
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="by data name: the stage's last measurement (loss, perplexity, task metrics)"
    )


class EvaluationOut(BaseModel):
    object: Literal["evaluation"] = "evaluation"
    job_id: str
    status: str
    model_id: str | None
    stages: list[StageEvaluation]
    final: dict[str, dict[str, float]] = Field(description="the final model, by data name")
    history: list[dict[str, Any]] = Field(description="every measurement: {stage, step, data, metric: value}")
    samples: list[dict[str, Any]] = Field(description="sample generations: {stage, step, data, task, prompt, "
                                          "reference, prediction}")  # fmt: skip


# --- generation ------------------------------------------------------------------------


class Strict(BaseModel):
    """Unknown fields are refused, and types are not coerced: `true` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingIn(Strict):
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] = 64
    temperature: Annotated[float, Field(ge=0.0, le=10.0, description="0: greedy")] = 0.0
    top_k: Annotated[int, Field(ge=0, description="0: no limit")] = 0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED)] = None
    precision: Annotated[
        Literal["fp32", "int8", "int4", "nf4"] | None,
        Field(description="fp32, or int8 / int4 / nf4 weight-only, among those the operator allows (default: theirs)"),
    ] = None


class GenerateIn(SamplingIn):
    prompt: Annotated[str, Field(max_length=1_000_000)]
    stop: Annotated[str | list[str] | None, Field(description="up to 4 stop strings")] = None
    stream: bool = False
    ignore_eos: Annotated[bool, Field(description="generate max_new_tokens whatever comes (benchmarks)")] = False


class TranslateIn(SamplingIn):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    source_lang: Annotated[str, Field(min_length=2, max_length=32)] = "en"
    target_lang: Annotated[str, Field(min_length=2, max_length=32)] = "fr"


class AnswerIn(SamplingIn):
    question: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    context: Annotated[str, Field(max_length=1_000_000)]


class SummarizeIn(SamplingIn):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerationOut(BaseModel):
    id: str
    object: str = "generation"
    model: str
    text: str
    finish_reason: str = Field(description="stop (end token or stop string) | length")
    usage: Usage


class TranslationOut(BaseModel):
    translation: str
    model: str
    finish_reason: str
    usage: Usage


class AnswerOut(BaseModel):
    answer: str
    model: str
    finish_reason: str
    usage: Usage


class SummaryOut(BaseModel):
    summary: str
    model: str
    finish_reason: str
    usage: Usage
