"""One JSON error shape for every response, `{"error": {"code", "message", "details", "param",
"type"}}`: the service's own errors (app.errors) and FastAPI's 404/405/422s alike.

`message` names the first problem (a 422's details list them all); `param` is the one field
at fault, when there is one (OpenAI's error objects have the same `message`, `param`, `type`
and `code`, so the `openai` client reads ours as its own)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from app.errors import ServiceError
from app.outage import unreachable
from app.storage import StorageError

log = logging.getLogger("stagecraft.api")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def error_type(status: int) -> str:
    """OpenAI's `type` for a status."""
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )


def _field(loc: str) -> str:
    """A detail's loc as the parameter a caller wrote: `body.temperature` -> `temperature`."""
    head, _, rest = loc.partition(".")
    return rest if head in ("body", "query", "path", "header") and rest else loc


def _problem(detail: dict[str, Any]) -> str | None:
    if "loc" in detail and "message" in detail:
        return f"{_field(str(detail['loc']))}: {detail['message']}"
    if "line" in detail and "reason" in detail:
        where = f"line {detail['line']}: " if detail["line"] else ""
        return f"{where}{detail.get('field', '')}: {detail['reason']}"
    return None


def param_of(details: list[dict[str, Any]]) -> str | None:
    """The one field every detail is about, if there is one."""
    locs = {_field(str(d["loc"])) for d in details if "loc" in d}
    return locs.pop() if len(locs) == 1 and all("loc" in d for d in details) else None


def first_problem(message: str, details: list[dict[str, Any]]) -> str:
    """`message` led by the first problem of `details` (unless it says that already): the
    summary alone ("the job spec has 3 error(s)") tells a reader nothing to fix."""
    first = _problem(details[0]) if details else None
    if first is None or str(details[0].get("message", details[0].get("reason", ""))) in message:
        return message
    return first if len(details) == 1 else f"{first} ({message}; all in details)"


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None, status: int = 400
) -> dict[str, Any]:
    details = details or []
    if status == 422:
        message = first_problem(message, details)
    param = param_of(details) if status == 422 else None
    return {"error": {"code": code, "message": message, "details": details, "param": param, "type": error_type(status)}}


def _response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, message, details, status), status_code=status, headers=headers)


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = _response(exc.status, exc.code, exc.message, exc.details)
    response.headers.update(getattr(exc, "headers", {}))  # Retry-After of a 429
    return response


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    response = _response(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:  # Starlette's names the methods of the one route it tried
        response.headers["Allow"] = ", ".join(allowed_methods(request))
    return response


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this request's path (included routers' too)."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return sorted(methods)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's request validation: a body sent without a JSON content type is a 415 that says
    so (curl's `-d` sends form encoding), a body that is not valid JSON a 400, anything else a 422."""
    assert isinstance(exc, RequestValidationError)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    not_json = content_type != "application/json" and not content_type.endswith("+json")
    if not_json and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):  # no JSON body at all
        got = f"'{content_type}'" if content_type else "none"
        message = f"the request body must be JSON: send `Content-Type: application/json` (got {got})"
        return _response(415, "unsupported_media_type", message)
    details = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx", {})
            return _response(400, "invalid_json", f"request body is not valid JSON: {ctx.get('error', e['msg'])}")
        details.append({"loc": loc, "message": e.get("msg", "invalid")})
    return _response(422, "invalid_request", f"the request has {len(details)} invalid field(s)", details)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _response(500, "internal_error", "internal error; it has been logged")


# --- the database unreachable: 503, never 500 --------------------------------------------

DB_RETRY_AFTER_S = 5


def unavailable(method: str, path: str, exc: BaseException, close: bool = False) -> JSONResponse:
    """The 503 of a database outage, with Retry-After (`close`: the request's body was not read)."""
    log.warning("database unreachable in %s %s: %s", method, path, type(exc).__name__)
    response = _response(503, "unavailable", "the service's database is unreachable; retry shortly")
    response.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
    if close:
        response.headers["Connection"] = "close"
    return response


async def database_unreachable_handler(request: Request, exc: Exception) -> JSONResponse:
    """OperationalError and the like: the database is down or refusing connections. The answer
    names no host, port or driver message; the log has them."""
    if not unreachable(exc):
        return await unexpected_error_handler(request, exc)
    return unavailable(request.method, request.url.path, exc)


async def storage_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The object store failed (app.storage.StorageError): 503, naming the store, with Retry-After."""
    log.warning("object store failed in %s %s: %s", request.method, request.url.path, exc)
    response = _response(503, "storage_unavailable", str(exc))
    response.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(SQLAlchemyError, database_unreachable_handler)
    app.add_exception_handler(StorageError, storage_error_handler)
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)


def parse_json(body: bytes) -> Any:
    """Decode a request body, or raise a 400 naming the line and column that broke it."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ServiceError("request body is not UTF-8", code="invalid_json") from None
    except RecursionError:
        raise ServiceError("request body nests arrays/objects too deeply", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        detail = {"loc": "body", "line": exc.lineno, "column": exc.colno, "message": exc.msg}
        raise ServiceError(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            [detail],
            code="invalid_json",
        ) from None
