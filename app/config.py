"""Settings for the service, from environment variables prefixed `STAGECRAFT_`.

Defaults describe `stagecraft up` on one machine: everything under one data directory,
a SQLite database, and a broker kept in a second SQLite file (kombu's SQLAlchemy
transport), so no server needs installing. Production sets DATABASE_URL to PostgreSQL
and BROKER_URL to Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STAGECRAFT_", extra="ignore")

    data_dir: Path = Path.home() / ".stagecraft"
    database_url: str = ""  # default: sqlite:///DATA_DIR/stagecraft.db
    broker_url: str = ""  # default: sqla+sqlite:///DATA_DIR/broker.db
    redis_url: str = ""  # pub/sub wake-ups; default: BROKER_URL when that is Redis
    queue: str = "train"
    # Log lines (app/logs.py): auto is readable on a terminal, JSON otherwise; json or console forces one.
    log_format: Literal["auto", "console", "json"] = "auto"
    # Artifacts (app/storage, docs/scaling.md): empty keeps them in the data directory; an fsspec
    # URL (s3://bucket/prefix, endpoint and credentials from AWS_*) makes the data directory a
    # cache of at most cache_bytes.
    storage_url: str = ""
    cache_bytes: int = 20 << 30
    # What this worker offers (`stagecraft worker --device --processes`): the queues it consumes.
    worker_device: Literal["cpu", "cuda"] = "cpu"
    worker_processes: int = 1
    # Experiment trackers (app/services/reporting.py, docs/spec.md `report_to`): report_to lists
    # those every job reports to besides its spec's (comma-separated: tensorboard, mlflow, wandb).
    # Empty dirs and URI mean the job's folder: jobs/<id>/tensorboard, a file store jobs/<id>/mlruns.
    report_to: str = ""
    tensorboard_dir: str = ""  # TensorBoard event files under <this>/<job id>
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "stagecraft"

    max_upload_bytes: int = 512 * 1024 * 1024
    max_json_bytes: int = 8 << 20  # a JSON request body over this is a 413 (app/api/body.py)
    # What one job spec may ask for (422 resource_limit_exceeded past them, app/services/spec_limits.py).
    max_job_parameters: int = 2_000_000_000
    max_job_tokens: int = 10**12
    max_job_steps: int = 1_000_000
    max_job_checkpoints: int = 1_000  # checkpoints one job writes (total steps / checkpointing.every_steps)
    # Per API key and per tenant (app/services/rate_limit.py, quotas.py): 429 past them.
    rate_limit_per_s: float = 100.0  # requests a second per API key, on average (0: no limit)
    rate_limit_burst: int = 400  # requests a key may send at once
    tenant_max_queued_jobs: int = 50
    tenant_max_unfinished_jobs: int = 100  # queued, running and cancelling
    # Running (and cancelling) jobs per tenant, checked when a worker claims one (0: no limit):
    # past it the job stays queued and its wake-up is sent again after tenant_busy_retry_s.
    tenant_max_running_jobs: int = 10
    tenant_busy_retry_s: float = 5.0
    tenant_max_storage_bytes: int = 100 << 30  # datasets, uploaded models and jobs' folders
    max_json_depth: int = 64  # arrays/objects nested deeper are a 400, in bodies and JSONL lines
    lease_s: float = 60.0  # a worker that misses renewing for this long has lost its job
    max_attempts: int = 3  # worker losses (lapsed leases) that fail a job; hand-backs do not count
    resend_unclaimed_s: float = 60.0  # a queued job's message no worker took in this long is sent again
    worker_idle_exit_s: float = 180.0  # an idle worker that leaves a sent job unclaimed this long exits
    cancel_poll_s: float = 0.5  # how often a worker reads its job's cancel flag
    event_flush_s: float = 0.5  # how long training-step events may wait to be written in a batch
    sse_poll_s: float = 0.5  # SSE: how often to look for new events without Redis
    sse_keepalive_s: float = 15.0
    # Database connections one process keeps (at most; as many as the API's 40 threads use at
    # once), besides app.db.AUTOCOMMIT_POOL_SIZE (8) for GET /v1/jobs/{id}. On PostgreSQL, API
    # processes x (db_pool_size + 8) must fit under max_connections.
    db_pool_size: int = 40
    key_cache_s: float = 10.0  # how long the API trusts a key it has checked: a revocation applies within this

    # Serving (app/inference.py): the in-process model cache and its dynamic batches.
    inference_cache_bytes: int = 4 << 30  # weights + KV caches of the models kept loaded (LRU)
    inference_max_batch: int = 16  # rows decoded together per model; more requests wait their turn
    inference_device: str = "auto"  # auto | cpu | cuda
    inference_threads: int = 0  # torch intra-op threads in the API process (0: torch's default)
    # Weight-only quantized serving (app/serving/precision.py, docs/api.md `precision`): what a request
    # gets by default (none: the model's own fp32 weights), what else one may ask for (comma-separated
    # fp32, int8, int4, nf4; the default is always allowed), and int4's group size (inputs per scale and
    # zero). nf4 needs a CPU with AVX512-BF16 (models/layers/nf4.py): elsewhere its loads are refused.
    inference_quantization: Literal["none", "fp32", "int8", "int4", "nf4"] = "none"
    inference_allowed_precisions: str = ""
    inference_int4_group_size: Literal[32, 64, 128] = 64
    # Decode steps in C++ on a CPU (models/inference/native.py): built once on first use (under a
    # minute, cached); where it cannot be built, eager steps with a warning.
    inference_native: bool = True
    # Decode steps through torch.compile (models/inference/compiled.py) when native steps are off:
    # faster tokens, a model load that compiles for minutes (other models wait meanwhile).
    inference_compile: bool = False
    # The decoder's KV cache (models/inference/decoder.py): fp32, bf16 (half the bytes, and a faster step
    # at several rows), or auto: bf16 for int8 / int4 / nf4, fp32 for fp32 (app/serving/engine.py).
    inference_kv_cache: Literal["auto", "fp32", "bf16"] = "auto"
    max_model_upload_bytes: int = 2 << 30
    max_model_parameters: int = 2_000_000_000  # an uploaded config declaring more is a 422 before any allocation
    max_archive_entries: int = 1_000  # members of an uploaded model archive
    # Converting an uploaded model runs in a child process with these limits (app.serving.sandbox):
    # past the time a 408, past the memory a 422. The memory fits max_model_parameters in fp32,
    # loaded and saved; at most import_workers conversions at once per API process, one per tenant.
    import_timeout_s: float = 600.0
    import_memory_bytes: int = 24 << 30
    import_workers: int = 2
    export_cache_bytes: int = 10 << 30  # export archives kept for reuse; the least recently used go first
    # Webhooks (app/services/webhooks.py, docs/api.md "Webhooks"). Targets on loopback, private,
    # link-local, multicast or unspecified addresses are refused unless allowed here: all of them
    # (webhook_allow_private) or some (webhook_allow_hosts: comma-separated host names and CIDRs).
    webhook_allow_private: bool = False
    webhook_allow_hosts: str = ""
    webhook_max_attempts: int = 10  # sends of one delivery before it is `failed`
    webhook_backoff_s: str = "10,30,120,600,1800,3600"  # waits after attempt 1, 2, ...; the last repeats
    webhook_connect_timeout_s: float = 5.0  # DNS and connect
    webhook_timeout_s: float = 10.0  # one attempt, from the DNS lookup to the response's (capped) body
    webhook_poll_s: float = 1.0  # how often each worker's sender looks for due deliveries
    webhook_max_per_tenant: int = 20

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Rows store paths relative to the data directory; the pipeline reports absolute ones.
        return v.expanduser().resolve()

    @field_validator("report_to")
    @classmethod
    def _report_targets(cls, v: str) -> str:
        from models.spec.job import REPORT_TARGETS  # (not at import: every command reads the settings)

        unknown = [t for t in v.replace(" ", "").split(",") if t and t not in REPORT_TARGETS]
        if unknown:
            raise ValueError(f"STAGECRAFT_REPORT_TO: unknown {', '.join(unknown)} (use {', '.join(REPORT_TARGETS)})")
        return v

    @field_validator("inference_allowed_precisions")
    @classmethod
    def _precisions(cls, v: str) -> str:
        unknown = [p for p in v.replace(" ", "").split(",") if p and p not in ("fp32", "int8", "int4", "nf4")]
        if unknown:
            listed = ", ".join(unknown)
            raise ValueError(f"STAGECRAFT_INFERENCE_ALLOWED_PRECISIONS: unknown {listed} (use fp32, int8, int4, nf4)")
        return v

    @property
    def report_targets(self) -> list[str]:
        return [t for t in self.report_to.replace(" ", "").split(",") if t]

    # The command-line client.
    url: str = "http://127.0.0.1:8000"
    api_key: str = ""

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'stagecraft.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def pubsub_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        return self.broker if self.broker.startswith(("redis://", "rediss://")) else None

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        """Uploaded models, and exports of every model."""
        return self.data_dir / "models"


class SettingsError(ValueError):
    """A setting from the environment that is not valid, named as the operator set it."""


def kv_cache_type(setting: str, precision: str) -> str:
    """The KV cache's element type of a model served in `precision` (STAGECRAFT_INFERENCE_KV_CACHE):
    "fp32" or "bf16" as set; "auto": bf16 for the weight-only precisions, whose projections take
    bf16 activations already, fp32 for fp32 (docs/api.md, "KV cache")."""
    if setting != "auto":
        return setting
    return "fp32" if precision == "fp32" else "bf16"


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment; SettingsError naming each bad STAGECRAFT_ variable."""
    try:
        return Settings()
    except ValidationError as exc:
        bad = [
            f"STAGECRAFT_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        ]
        raise SettingsError("; ".join(bad)) from None
