"""Shared route dependencies, declared once as `Annotated` types."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session

from app.api import body
from app.config import Settings
from app.db import Database
from app.errors import NotFound
from app.queue import outbox
from app.services import jobs
from app.services.names import is_id
from app.services.pagination import MAX_LIMIT
from app.serving.engine import ModelCache
from app.tables import Job

bearer = HTTPBearer(auto_error=False, description="an API key from `stagecraft keys create --tenant NAME`")


# Dependencies that only read app.state are `async`: FastAPI runs a plain `def` dependency on
# a worker thread, and a thread hop per request for an attribute read is most of a GET's cost.


def database_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def app_database(request: Request) -> Database:
    return database_of(request)


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with (app.config.get_settings is the process's)."""
    settings: Settings = request.app.state.settings
    return settings


def read_session(request: Request) -> Iterator[Session]:
    with database_of(request).read() as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    """A session that writes (on SQLite, one that takes the write lock when it begins); what it
    queues or wakes is sent once it commits (app.queue.outbox)."""
    with database_of(request).write() as session:
        yield outbox.bind(session, request.app.state.outbox)


async def model_cache(request: Request) -> ModelCache:
    """The serving cache: loaded models, and the one thread all torch work runs on."""
    cache: ModelCache = request.app.state.models
    return cache


SettingsDep = Annotated[Settings, Depends(app_settings)]
ModelCacheDep = Annotated[ModelCache, Depends(model_cache)]
DatabaseDep = Annotated[Database, Depends(app_database)]
ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    after: Annotated[str | None, Query(description="cursor: the last id of the previous page")] = None,
) -> PageParams:
    return PageParams(limit, after)


PageDep = Annotated[PageParams, Depends(page_params)]
# An Idempotency-Key (docs/api.md): any text up to 255 characters, no control characters (a
# NUL would reach the database, where text cannot hold one).
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$", description="retries with the same key return the first job"
    ),
]


async def tenant(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    _scheme: object = Depends(bearer),
) -> str:
    """The caller's tenant id (401 without a valid key); cached keys cost no query. Requests
    with a JSON body were authenticated already, before it was read (app.api.body)."""
    return await body.authenticate(request.app, authorization, request.scope)


TenantDep = Annotated[str, Depends(tenant)]


async def ids_in_path(request: Request, _tenant: TenantDep) -> None:
    """Every path parameter of /v1 is an id (app.services.names): one that is not names no
    object, a 404 before any query (after the key is checked). main.py adds this to each router."""
    for param, value in request.path_params.items():
        if not is_id(value):
            raise NotFound(f"no {param.removesuffix('_id').replace('_', ' ')} '{value}'")


def job(request: Request, job_id: str, tenant_id: TenantDep) -> Job:
    """The tenant's job or 404. Its own short session: an SSE stream must not hold one open."""
    with database_of(request).read() as session:
        return jobs.get(session, tenant_id, job_id)


JobDep = Annotated[Job, Depends(job)]
