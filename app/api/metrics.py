"""Prometheus: request counts and latencies by route template, and jobs by status."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
