"""OpenAI's fine-tuning API (`client.fine_tuning.jobs.*`): each job is a Stagecraft job (also in
/v1/jobs) built by app.services.openai_ft, which documents how the request's hyperparameters
become the spec: method `supervised` (the default) a `finetune` stage, method `dpo` a
`preference` stage. Another method, integrations or an unknown parameter is a 422 naming it
in `param`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from app.api import openai_objects as objects
from app.api.body import ParsedJsonRoute
from app.api.deps import IdempotencyKey, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.openapi import ERRORS, error
from app.services import openai_ft
from app.services.openai_ft import bad_param
from app.services.pagination import MAX_LIMIT

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["openai fine-tuning"], responses=ERRORS, route_class=ParsedJsonRoute
)
Obj = dict[str, Any]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
After = Annotated[str | None, Query(description="the last id of the previous page")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def auto_or(kind: type[int] | type[float], low: float, high: float) -> Any:
    """`"auto"` or a number in [low, high] (for an int, low included; for a float, excluded), with
    one error naming both (a plain union would report one error per branch)."""
    what = f"a whole number from {low:g} to {high:g}" if kind is int else f"a number above {low:g}, at most {high:g}"

    def check(value: Any) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        whole = number and (kind is float or float(value).is_integer())
        ok = value == "auto" or (whole and (low <= value if kind is int else low < value) and value <= high)
        if not ok:
            raise PydanticCustomError("auto_or_number", "must be 'auto' or {what}", {"what": what})
        return value if value == "auto" else kind(value)

    return Annotated[str | int | float, BeforeValidator(check)]


class Hyperparameters(Strict):
    n_epochs: auto_or(int, 1, 50) = "auto"  # type: ignore[valid-type]
    batch_size: auto_or(int, 1, 256) = "auto"  # type: ignore[valid-type]
    learning_rate_multiplier: auto_or(float, 0, 20) = "auto"  # type: ignore[valid-type]


class DpoHyperparameters(Hyperparameters):
    beta: auto_or(float, 0, 1000) = "auto"  # type: ignore[valid-type]  # the spec's bounds of loss.beta


class Supervised(Strict):
    hyperparameters: Hyperparameters | None = None


class Dpo(Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(Strict):
    type: str = Field(description="`supervised` (a finetune stage) or `dpo` (a preference stage)")
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = Field(None, description="not supported")

    def settings(self) -> Supervised | Dpo | None:
        """The settings of its own type; another type's settings are a 422 naming them."""
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise bad_param(f"method.{other}", f"settings of method '{other}' given with method type '{self.type}'")
        return self.supervised if self.type == "supervised" else self.dpo


class FineTuneIn(Strict):
    model: Annotated[str, Field(min_length=1, max_length=200, description="a Stagecraft model, checkpoint or job id")]
    training_file: Annotated[str, Field(min_length=1, max_length=40)]
    validation_file: Annotated[str | None, Field(max_length=40)] = None
    hyperparameters: Hyperparameters | None = Field(None, description="deprecated by OpenAI in favour of `method`")
    method: Method | None = None
    suffix: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    seed: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]] | None, Field(max_length=16)] = None
    integrations: list[dict[str, Any]] | None = Field(None, description="not supported: must be absent or empty")

    def request(self) -> openai_ft.Request:
        if self.integrations:
            raise bad_param("integrations", "integrations are not supported")
        method = self.method.type if self.method is not None else "supervised"
        if method not in openai_ft.METHODS:
            supported = " or ".join(f"'{m}'" for m in openai_ft.METHODS)
            raise bad_param("method.type", f"'{method}' is not supported: {supported}")
        settings = self.method.settings() if self.method is not None else None
        top = self.hyperparameters.model_dump() if self.hyperparameters is not None else None
        inner = settings.hyperparameters.model_dump() if settings and settings.hyperparameters else None
        # The deprecated top-level form holds the hyperparameters every method has: given with
        # the method's own, the two must agree on those.
        if top is not None and inner is not None and any(inner[k] != v for k, v in top.items()):
            raise bad_param("hyperparameters", f"differs from method.{method}.hyperparameters: give one")
        defaults = (DpoHyperparameters if method == "dpo" else Hyperparameters)().model_dump()
        return openai_ft.Request(
            model=self.model,
            training_file=self.training_file,
            validation_file=self.validation_file,
            hyperparameters=inner or {**defaults, **(top or {})},
            suffix=self.suffix,
            seed=self.seed,
            metadata=self.metadata or {},
            method=method,
        )


@router.post("", summary="Create a fine-tuning job (OpenAI fine-tuning API)",
             responses={422: error("a bad or unsupported parameter, named in `param`")})  # fmt: skip
def create_job(
    body: FineTuneIn,
    tenant_id: TenantDep,
    session: WriteSession,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Obj:
    """A job on `training_file` from `model` (method `supervised`: a finetune stage on chat or
    prompt/completion records; `dpo`: a preference stage on preference records);
    `fine_tuned_model` serves once it has succeeded."""
    job, ft = openai_ft.create(session, settings, tenant_id, body.request(), idempotency_key)
    session.commit()  # the job's wake-up leaves now
    return objects.job(job, ft)


@router.get("", summary="List fine-tuning jobs (OpenAI fine-tuning API)")
def list_jobs(tenant_id: TenantDep, session: ReadSession, limit: Limit = 20, after: After = None) -> Obj:
    """Newest first: the jobs made through this API (every job is in /v1/jobs)."""
    rows, more = openai_ft.list_page(session, tenant_id, limit, after)
    return objects.listing([objects.job(j, ft) for j, ft in rows], more)


@router.get("/{job_id}", summary="Retrieve a fine-tuning job (OpenAI fine-tuning API)")
def retrieve_job(job_id: str, tenant_id: TenantDep, session: ReadSession) -> Obj:
    return objects.job(*openai_ft.get(session, tenant_id, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job (OpenAI fine-tuning API)",
             responses={409: error("`job_finished`: the job already ended")})  # fmt: skip
def cancel_job(job_id: str, tenant_id: TenantDep, session: WriteSession) -> Obj:
    job, ft = openai_ft.cancel(session, tenant_id, job_id)
    session.commit()  # its worker is woken now
    return objects.job(job, ft)


@router.get("/{job_id}/events", summary="List a fine-tuning job's events (OpenAI fine-tuning API)")
def list_events(job_id: str, tenant_id: TenantDep, session: ReadSession, limit: Limit = 20, after: After = None) -> Obj:
    """Newest first; `level` and `message` in OpenAI's words, `data` with the figures."""
    job, _ = openai_ft.get(session, tenant_id, job_id)
    rows, more = openai_ft.events_page(session, job, limit, after)
    return objects.listing([objects.event(e, job.total_steps) for e in rows], more)


@router.get("/{job_id}/checkpoints", summary="List a fine-tuning job's checkpoints (OpenAI fine-tuning API)")
def list_checkpoints(
    job_id: str, tenant_id: TenantDep, session: ReadSession, limit: Limit = 10, after: After = None
) -> Obj:
    """Newest first: the kept checkpoints (one per epoch, the last 3); each id serves as a model."""
    job, _ = openai_ft.get(session, tenant_id, job_id)
    rows, more = openai_ft.checkpoints_page(session, job, limit, after)
    data = [objects.checkpoint(c) for c in rows]
    return objects.listing(data, more, first_id=rows[0].id if rows else None, last_id=rows[-1].id if rows else None)
