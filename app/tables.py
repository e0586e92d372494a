"""Database tables (SQLAlchemy 2.0, typed). Called tables, not models: `models` is the ML package.

Ids are a type prefix, the creation time in milliseconds (12 hex digits) and 80 random
bits, so ordering by id orders by creation: cursor pagination needs nothing else.
Every timestamp is timezone-aware UTC (SQLite stores it naive; `UTCDateTime` restores it).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(40)
# A job row's status (docs/api.md, the job object; `validating` is the create request itself, never a row).
# The transitions between them are all in app/services/lifecycle.py.
JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running", "cancelling")
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
STATUSES: tuple[JobStatus, ...] = ACTIVE + FINISHED


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON(), str: String(255)}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the key; the key is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str]
    kind: Mapped[str] = mapped_column(String(16))  # text | records | preference
    format: Mapped[str] = mapped_column(String(32))  # txt | jsonl-text | jsonl-records
    num_records: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data directory
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index(None, "tenant_id", "id"),)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    estimates: Mapped[dict[str, Any]]
    total_steps: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    stage_index: Mapped[int | None] = mapped_column(Integer)
    stage_name: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims, hand-backs included
    losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # leases that lapsed
    lease_owner: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(ID)
    idempotency_key: Mapped[str | None]
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # the newest event's seq
    enqueued_at: Mapped[datetime | None]  # set once the broker took the wake-up message
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index(None, "tenant_id", "id"),
        Index(None, "status", "lease_expires_at"),
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime]
    stage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[dict[str, Any]]
    # Reported by an attempt after the checkpoint a later attempt resumed from: that later
    # attempt reports these steps again, so readers skip the earlier report (events.supersede).
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Metric(Base):
    __tablename__ = "metrics"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    stage_name: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("job_id", "step"),)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The job that trained it; None for an uploaded model (Hugging Face folder, GGUF file, export).
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(String(1024))
    parameters: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(BigInteger)
    evaluation: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index(None, "tenant_id", "id"),)


class FineTune(Base):
    """What a job created through the OpenAI fine-tuning API was asked with (app.services.openai_ft):
    the job itself is an ordinary finetune job (a preference job for method dpo)."""

    __tablename__ = "fine_tunes"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))  # the base model as the caller named it
    training_file: Mapped[str] = mapped_column(ID)
    validation_file: Mapped[str | None] = mapped_column(ID)
    hyperparameters: Mapped[dict[str, Any]]  # n_epochs, batch_size, learning_rate_multiplier (dpo: beta), resolved
    suffix: Mapped[str | None] = mapped_column(String(64))
    user_metadata: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index(None, "tenant_id", "job_id"),)


class Worker(Base):
    """A running worker and what it offers (app.queue.routing): a heartbeat row, gone when it stops."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:tag, as job.started names it
    host: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(10))
    processes: Mapped[int]
    queues: Mapped[list[str]] = mapped_column(JSON)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Webhook(Base):
    """A URL a tenant asked to be told of its jobs' ends at (app.services.webhooks)."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)  # the event types it receives
    description: Mapped[str | None]
    secret: Mapped[str] = mapped_column(String(64))  # the HMAC key deliveries are signed with (whsec_...)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index(None, "tenant_id", "id"),)


class WebhookDelivery(Base):
    """One event to send to one webhook, written in the transaction that wrote the event;
    a sender (app.services.webhook_sender) claims it, sends it and records the outcome."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ID)  # no foreign key: a delivery outlives its job's deletion
    event_id: Mapped[str] = mapped_column(ID)  # the same for every webhook the event goes to
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent (and signed), every attempt
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When it is due (pending); a claimed delivery's is pushed past its send, so that a sender
    # that dies mid-send leaves it due again. None once delivered or failed.
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    response_status: Mapped[int | None] = mapped_column(Integer)  # the last attempt's HTTP status
    error: Mapped[str | None] = mapped_column(String(500))  # the last attempt's failure, if it failed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    __table_args__ = (Index(None, "webhook_id", "id"), Index(None, "status", "next_attempt_at"))
