"""Request bodies, whatever their Content-Type, guarded before any route sees them (an ASGI
middleware):

- the caller is authenticated first (401 before a byte of the body is read, on /v1; the
  key's lookup during a database outage is a 503 with Retry-After, as everywhere);
- a JSON body is capped (`max_json_bytes`: 413 on a Content-Length over it, or as soon as a
  streamed body passes it), parsed on a worker thread, never the event loop, and nested at
  most `max_json_depth` deep (a deeper body is a 400, where json.loads would recurse until
  RecursionError);
- any other body goes on unread to its route (`ParsedJsonRoute`, the route class of the
  routers whose routes take bodies), which answers 415 unless its Content-Type is one the route documents (its
  OpenAPI request body: JSON for the JSON routes, multipart/form-data for uploads, which
  app.api.uploads streams to disk under their own cap, parsing on a worker thread; a route
  without a body takes a JSON one, ignored), and presets the parsed JSON on its request, so
  FastAPI does not parse it again on the loop.

A refusal sent before the body was read closes the connection (`Connection: close`): the
server never reads the rest of it (no 401 or 415 costs more than the request's headers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.api.errors import error_body, unavailable
from app.errors import PayloadTooLarge, ServiceError, UnsupportedMediaType, from_model_error
from app.outage import unreachable
from app.services import auth
from models.data.bounded_json import loads
from models.errors import TooDeep

PARSED = "stagecraft.json"  # the scope key of the parsed body
TENANT = "stagecraft.tenant"  # the scope key of the authenticated tenant
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how a JSON text can hold one
_SURROGATES = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """The path of a string (or key) holding a lone surrogate: no Unicode text, so nothing a
    database stores or a response encodes (a 500, once)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, loc = stack.pop()
        if isinstance(v, dict):
            for k, child in v.items():
                path = f"{loc}.{k}" if loc else str(k)
                if not k.isascii() and _SURROGATES.search(k):
                    return path.encode("utf-8", "backslashreplace").decode()
                stack.append((child, path))
        elif isinstance(v, list):
            stack.extend((c, f"{loc}.{i}" if loc else str(i)) for i, c in enumerate(v))
        elif isinstance(v, str) and not v.isascii() and _SURROGATES.search(v):
            return loc or "(root)"
    return None


def _parse(body: bytes, max_depth: int) -> tuple[Any, ServiceError | None]:
    try:
        value = loads(body, max_depth)
        where = _lone_surrogate(value) if _SURROGATE_ESCAPE.search(body) else None
        if where is not None:
            problem = "a lone surrogate (a \\uD800-\\uDFFF escape alone) is not Unicode text"
            message = f"request body is not valid JSON: {where}: {problem}"
            return None, ServiceError(message, [{"loc": where, "message": problem}], code="invalid_json")
        return value, None
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
    logs.bind(tenant=tenant_id)  # the rest of the request's log lines name it
    return tenant_id


def _media(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length") not in (None, "0") or "transfer-encoding" in headers  # HTTP/1.1


class BodyGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not _has_body(headers):
            return await self.app(scope, receive, send)
        json_body = _is_json(_media(headers.get("content-type", "")))
        try:
            if scope["path"].startswith("/v1/"):
                await authenticate(scope["app"], headers.get("authorization"), scope)
            if not json_body:  # its route takes it (an upload) or refuses it (415), unread
                return await self.app(scope, receive, send)
            body = await self._read(receive, headers.get("content-length"))
        except ServiceError as exc:
            return await _refuse(exc, scope, receive, send)
        except SQLAlchemyError as exc:
            if not unreachable(exc):
                raise
            return await unavailable(scope["method"], scope["path"], exc, close=True)(scope, receive, send)
        if body:
            parsed, problem = await anyio.to_thread.run_sync(_parse, body, self.max_depth)
            if problem is not None:
                return await _refuse(problem, scope, receive, send, close=False)
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


async def _refuse(exc: ServiceError, scope: Scope, receive: Receive, send: Send, close: bool = True) -> None:
    """The error as a response; `close`: the body was not (all) read, so the connection ends."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    headers.update(getattr(exc, "headers", {}))
    if close:
        headers["Connection"] = "close"
    body = error_body(exc.code, exc.message, exc.details, exc.status)
    await JSONResponse(body, exc.status, headers=headers)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def body_types(route: APIRoute) -> frozenset[str]:
    """The media types of a route's documented request body (none: it takes no body)."""
    content = (route.openapi_extra or {}).get("requestBody", {}).get("content")
    if content:
        return frozenset(content)
    return frozenset({"application/json"}) if route.body_field is not None else frozenset()


class UnreadBody(UnsupportedMediaType):
    """A 415 whose body is not read: the connection ends with the answer."""

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"Connection": "close"}


def unsupported(media: str, accepted: frozenset[str]) -> UnsupportedMediaType:
    got = f"'{media}'" if media else "none"
    if "multipart/form-data" in accepted:
        message = f"send the file as multipart/form-data with a `file` part (got {got})"
    elif accepted:
        message = f"the request body must be JSON: send `Content-Type: application/json` (got {got})"
    else:
        message = f"this route takes no request body (got one of type {got})"
    return UnreadBody(message)


class ParsedJsonRoute(APIRoute):
    """The route class of the API's routers: a body of a type the route does not document is a 415
    before it is read (a route without a body takes JSON, ignored); a JSON body is the one
    BodyGuard parsed off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        accepted = body_types(self)
        takes_json = "application/json" in accepted or not accepted

        async def guarded(request: Request) -> Response:
            if _has_body(request.headers):
                media = _media(request.headers.get("content-type", ""))
                if media not in accepted and not (takes_json and _is_json(media)):
                    raise unsupported(media, accepted)
            if PARSED in request.scope:
                request._json = request.scope[PARSED]
            return await handler(request)

        return guarded
