"""Liveness, readiness (database reachable and migrated, broker reachable) and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select, text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import Database, schema_problem
from app.errors import error_body
from app.tables import Job

router = APIRouter(tags=["health"])

REQUESTS = Counter("stagecraft_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "stagecraft_http_request_seconds",
    "HTTP request latency (to the response start; SSE streams included)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS = Gauge("stagecraft_jobs", "jobs by status", ["status"])


class PrometheusMiddleware:
    """Counts requests and times them, labelled by route template (not raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = scope.get("route")
                name = getattr(route, "path", "unmatched")
                LATENCY.labels(scope["method"], name).observe(time.perf_counter() - start)
                REQUESTS.labels(scope["method"], name, str(status)).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_broker(request: Request) -> None:
    with request.app.state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@router.get(
    "/readyz",
    responses={503: {"description": "the database or the broker is unreachable, or the schema is not migrated"}},
)
async def readyz(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    problems = []

    def check_db() -> None:
        with db.read() as session:
            session.execute(text("SELECT 1"))
            problem = schema_problem(session)
            if problem:
                raise RuntimeError(problem)

    for name, check in (("database", check_db), ("broker", lambda: _check_broker(request))):
        try:
            await run_in_threadpool(check)
        except Exception as exc:
            problems.append({"component": name, "message": str(exc)[:500]})
    if problems:
        body = error_body("not_ready", "a dependency is unreachable or not migrated", problems)
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus(request: Request) -> Response:
    db: Database = request.app.state.db
    with db.read() as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled"):
        JOBS.labels(status).set(counts.get(status, 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
