"""JSON request bodies, guarded before any route sees them (an ASGI middleware):

- the caller is authenticated first (401 before a byte of the body is read, on /v1);
- the body is capped (`max_json_bytes`: 413 on a Content-Length over it, or as soon as a
  streamed body passes it);
- it is parsed on a worker thread, never the event loop, and nested at most
  `max_json_depth` deep (a deeper body is a 400, where json.loads would recurse until
  RecursionError).

Routes then use the parsed value (`use_parsed_json` presets it on every route's request),
so FastAPI does not parse it again on the loop. Multipart uploads are left alone: they are
streamed to disk by app.api.uploads after their route has authenticated.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, request_response
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.errors import PayloadTooLarge, ServiceError, from_model_error
from app.services import auth
from models.data.bounded_json import loads
from models.errors import TooDeep

PARSED = "stagecraft.json"  # the scope key of the parsed body
TENANT = "stagecraft.tenant"  # the scope key of the authenticated tenant
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _parse(body: bytes, max_depth: int) -> tuple[Any, ServiceError | None]:
    try:
        return loads(body, max_depth), None
    except UnicodeDecodeError:
        return None, ServiceError("request body is not UTF-8", code="invalid_json")
    except json.JSONDecodeError as exc:
        detail = {"loc": "body", "line": exc.lineno, "column": exc.colno, "message": exc.msg}
        message = f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return None, ServiceError(message, [detail], code="invalid_json")
    except TooDeep as exc:
        return None, from_model_error(exc, "body")


async def authenticate(app: Any, authorization: str | None, scope: Scope | None = None) -> str:
    """The tenant of an `Authorization: Bearer` header (401 otherwise; cached keys cost no
    query), once per request (kept in `scope`); the key's rate limit is checked then (429)."""
    if scope is not None and TENANT in scope:
        tenant: str = scope[TENANT]
        return tenant
    key_hash = auth.bearer_key_hash(authorization)
    cache: auth.KeyCache = app.state.key_cache
    tenant_id = cache.get(key_hash)
    if tenant_id is None:

        def lookup() -> str:
            with app.state.db.read() as session:
                return auth.tenant_of(session, key_hash)

        tenant_id = await anyio.to_thread.run_sync(lookup)
        cache.put(key_hash, tenant_id)
    limiter = getattr(app.state, "limiter", None)
    if limiter is not None:
        await limiter.check(key_hash)
    if scope is not None:
        scope[TENANT] = tenant_id
    return tenant_id


def _is_json(content_type: str) -> bool:
    main = content_type.split(";")[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


class JsonBodyGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        declared = headers.get("content-length")
        no_body = declared in (None, "0") and "transfer-encoding" not in headers  # HTTP/1.1: no body
        if content_type.lower().startswith("multipart/") or no_body:
            return await self.app(scope, receive, send)
        try:
            if scope["path"].startswith("/v1/"):
                await authenticate(scope["app"], headers.get("authorization"), scope)
            body = await self._read(receive, declared)
        except ServiceError as exc:
            return await self._error(exc, scope, receive, send)
        if body and (not content_type or _is_json(content_type)):
            parsed, problem = await anyio.to_thread.run_sync(_parse, body, self.max_depth)
            if problem is not None and (content_type or scope["path"].startswith("/v1/")):
                return await self._error(problem, scope, receive, send)
            if problem is None:
                scope[PARSED] = parsed
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, declared: str | None) -> bytes:
        limit = self.max_bytes
        too_large = PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes (max_json_bytes)")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _error(self, exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        headers.update(getattr(exc, "headers", {}))
        if exc.status == 413:
            headers["Connection"] = "close"  # the rest of the body is not read
        response = JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=headers)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def use_parsed_json(app: FastAPI) -> None:
    """Make every route read the body the guard parsed (call after the routers are included)."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            route.app = request_response(_presetting(route.get_route_handler()))


def _presetting(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def preset(request: Request) -> Response:
        if PARSED in request.scope:
            request._json = request.scope[PARSED]
        return await handler(request)

    return preset
