"""One JSON error shape for every response, `{"error": {"code", "message", "details"}}`: the
service's own errors (app.errors) and FastAPI's 404/405/422s alike."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import ServiceError

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


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


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
    return response


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
    return _response(422, "invalid_request", "the request has invalid fields", details)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _response(500, "internal_error", "internal error; it has been logged")


def install(app: FastAPI) -> None:
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
