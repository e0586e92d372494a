"""Each request's id and its log line.

The id is the caller's `X-Request-ID` when that is a bounded printable token (app.logs.request_id),
else a new one; the response carries it back in the same header. It is bound to the log
context for the whole request, so every line logged for it names it, and a job the request
creates keeps it (app.services.lifecycle.create: the `job.queued` event) for its worker's
lines. When the response starts, one line `stagecraft.api.access` tells method, path, status,
duration and tenant (uvicorn's own access log is off).
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.api.body import TENANT

log = logging.getLogger("stagecraft.api.access")


class RequestContext:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = logs.request_id(Headers(scope=scope).get(logs.REQUEST_ID_HEADER))
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[logs.REQUEST_ID_HEADER] = rid
                _access(scope, message["status"], time.perf_counter() - start)
            await send(message)

        with logs.scope(request_id=rid):
            await self.app(scope, receive, send_with_id)


def _access(scope: Scope, status: int, seconds: float) -> None:
    method, path = scope["method"], scope.get("path", "")
    fields = {"method": method, "path": path, "status": status, "duration_ms": round(seconds * 1000, 1)}
    tenant = scope.get(TENANT)
    if tenant is not None:
        fields["tenant"] = tenant
    log.info("%s %s %d", method, path, status, extra=fields)
