"""Shared route dependencies, declared once as `Annotated` types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import Database
from app.inference import Engine
from app.services import auth, jobs
from app.tables import Job

bearer = HTTPBearer(auto_error=False, description="an API key from `stagecraft keys create --tenant NAME`")


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def read_session(request: Request) -> Iterator[Session]:
    with get_db(request).read() as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    """A session that writes (on SQLite, one that takes the write lock when it begins)."""
    with get_db(request).write() as session:
        yield session


def get_engine(request: Request) -> Engine:
    """The serving engine: the model cache, and the one thread all torch work runs on."""
    engine: Engine = request.app.state.engine
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
DatabaseDep = Annotated[Database, Depends(get_db)]
ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]


async def tenant(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    _scheme: object = Depends(bearer),
) -> str:
    """The caller's tenant id (401 without a valid key); cached keys cost no query."""
    key_hash = auth.bearer_key_hash(authorization)
    cache: auth.KeyCache = request.app.state.key_cache
    tenant_id = cache.get(key_hash)
    if tenant_id is None:

        def lookup() -> str:
            with get_db(request).read() as session:
                return auth.tenant_of(session, key_hash)

        tenant_id = await run_in_threadpool(lookup)
        cache.put(key_hash, tenant_id)
    return tenant_id


TenantDep = Annotated[str, Depends(tenant)]


def job(request: Request, job_id: str, tenant_id: TenantDep) -> Job:
    """The tenant's job or 404. Its own short session: an SSE stream must not hold one open."""
    with get_db(request).read() as session:
        return jobs.get(session, tenant_id, job_id)


JobDep = Annotated[Job, Depends(job)]
