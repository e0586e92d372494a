"""Liveness, readiness (database reachable and migrated, broker and object store reachable) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api import scrape
from app.api.deps import DatabaseDep, SettingsDep
from app.api.errors import DB_RETRY_AFTER_S, error_body
from app.db import Database
from app.errors import SchemaBehind
from app.migrate import schema_problem
from app.storage import StorageError, get_store

router = APIRouter(tags=["health"])
log = logging.getLogger("stagecraft.api")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_broker(request: Request) -> None:
    with request.app.state.broker.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@router.get(
    "/readyz",
    responses={503: {"description": "a database, broker or object store outage, or an unmigrated schema"}},
)
async def readyz(request: Request, db: DatabaseDep) -> JSONResponse:
    problems = await readiness_problems(request, db)
    if problems:
        body = error_body("not_ready", "a dependency is unreachable or not migrated", problems, 503)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(DB_RETRY_AFTER_S)})
    return JSONResponse({"status": "ready"})


async def readiness_problems(request: Request, db: Database) -> list[dict[str, str]]:
    """{component, message} for each dependency that is down or not migrated (also the landing page's)."""
    problems = []

    def check_db() -> None:
        with db.read() as session:
            session.execute(text("SELECT 1"))
            problem = schema_problem(session)
            if problem:
                raise SchemaBehind(problem)

    store = get_store(request.app.state.settings)
    for name, check in (("database", check_db), ("broker", lambda: _check_broker(request)), ("storage", store.check)):
        try:
            await run_in_threadpool(check)
        except (SchemaBehind, StorageError) as exc:  # our own message: what to run, or which store fails
            problems.append({"component": name, "message": str(exc)})
        except Exception as exc:  # the driver's text names hosts and ports: logged, not answered
            log.warning("readyz: %s unreachable: %s", name, exc)
            problems.append({"component": name, "message": f"the {name} is unreachable"})
    return problems


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus(db: DatabaseDep, settings: SettingsDep) -> Response:  # this process's, the jobs table's, the workers'
    return Response(scrape.exposition(db, settings), media_type=CONTENT_TYPE_LATEST)
