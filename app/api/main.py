"""The FastAPI application: `create_app()`, served by `stagecraft api` / `stagecraft up`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app.api import body, deps, errors, openapi
from app.api.metrics import PrometheusMiddleware
from app.api.request_context import RequestContext
from app.api.routes import (
    dashboard,
    datasets,
    events,
    files,
    fine_tuning,
    generate,
    health,
    jobs,
    landing,
    models,
    openai,
)
from app.api.routes import webhooks as webhook_routes
from app.config import Settings, get_settings
from app.db import get_database
from app.queue.broker import Broker
from app.queue.outbox import Outbox
from app.queue.wakeups import EventWaiters, Publisher
from app.services import auth, incoming, rate_limit
from app.serving.engine import ModelCache


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await app.state.waiters.start()
        await sweep_uploads(settings)  # before the first request: what a killed process left goes
        sweeping = asyncio.create_task(sweep_uploads(settings, every_s=incoming.SWEEP_EVERY_S))
        yield
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        await app.state.waiters.stop()
        if app.state.limiter is not None:
            await app.state.limiter.close()

    # /docs and /redoc with Swagger UI and ReDoc from the fastapi-offline package: no CDN.
    app = FastAPIOffline(
        title="Stagecraft",
        version="0.1.0",
        summary="Training-as-a-service for language models: pretrain, fine-tune and multi-step optimization.",
        lifespan=lifespan,
    )
    s = settings
    app.state.settings = s
    app.state.db = get_database(s.db_url, s.db_pool_size)
    app.state.broker = Broker(s, app.state.db.write)
    app.state.outbox = Outbox(app.state.broker, Publisher(s.pubsub_url))
    app.state.waiters = EventWaiters(s.pubsub_url, s.sse_poll_s)
    app.state.key_cache = auth.KeyCache(s.key_cache_s)
    app.state.limiter = rate_limit.make_limiter(s)
    app.state.models = ModelCache(
        s.inference_cache_bytes, s.inference_max_batch, s.inference_device, s.inference_threads,
        s.inference_int4_group_size, s.inference_compile, s.inference_kv_cache, s.inference_native,
    )  # fmt: skip
    errors.install(app)
    app.add_middleware(body.BodyGuard, max_bytes=s.max_json_bytes, max_depth=s.max_json_depth)
    app.add_middleware(PrometheusMiddleware)
    app.add_middleware(RequestContext)  # outermost: every line of a request names its id
    for module in (datasets, jobs, events, models, generate, openai, files, fine_tuning, webhook_routes):
        app.include_router(module.router, dependencies=[Depends(deps.ids_in_path)])
    for module in (health, dashboard, landing):  # dashboard: `/` and /dashboard/... (app/dashboard)
        app.include_router(module.router)
    app.openapi = lambda: openapi.with_job_spec(app)  # type: ignore[method-assign]
    return app


async def sweep_uploads(settings: Settings, every_s: float | None = None) -> None:
    """Remove the uploads a killed process left behind (app.services.incoming): once, or every
    `every_s` seconds for ever."""
    while True:
        if every_s is not None:
            await asyncio.sleep(every_s)
        try:
            await anyio.to_thread.run_sync(incoming.sweep, settings)
        except Exception:
            logging.getLogger("stagecraft.api").exception("sweeping stale uploads failed")
        if every_s is None:
            return
