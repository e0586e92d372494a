"""The FastAPI application: `create_app()`, served by `stagecraft api` / `stagecraft up`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from app import errors
from app.broker import make_celery
from app.config import Settings, get_settings
from app.db import get_database
from app.inference import Engine
from app.notify import EventWaiters, Publisher
from app.routes import datasets, events, health, inference, jobs, models, openai
from app.services import auth
from models.spec import JobSpec


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await app.state.waiters.start()
        yield
        await app.state.waiters.stop()

    app = FastAPI(
        title="Stagecraft",
        version="0.1.0",
        summary="Training-as-a-service for language models: pretrain, fine-tune and multi-step optimization.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = get_database(settings.db_url)
    app.state.celery = make_celery(settings)
    app.state.publisher = Publisher(settings.pubsub_url)
    app.state.waiters = EventWaiters(settings.pubsub_url, settings.sse_poll_s)
    app.state.key_cache = auth.KeyCache(settings.key_cache_s)
    errors.install(app)
    app.add_middleware(health.PrometheusMiddleware)
    s = settings
    app.state.engine = Engine(s.inference_cache_bytes, s.inference_max_batch, s.inference_device, s.inference_threads)
    for module in (datasets, jobs, events, models, inference, openai, health):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the JobSpec, which the job routes read as raw JSON (to report
    spec errors with their field paths) and so do not declare as a parameter."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _, defs = models_json_schema([(JobSpec, "validation")], ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    app.openapi_schema = schema
    return schema
