"""Every exception of the service, in one tree. A ServiceError carries the HTTP status and
`code` a client sees; the others never reach a client.

    Exception
    ├── ServiceError (400 bad_request)
    │   ├── Unauthorized (401)   ├── NotFound (404)   ├── Conflict (409)
    │   ├── TimeLimitExceeded (408 time_limit_exceeded)   untrusted work past its time (app.serving.sandbox)
    │   ├── PayloadTooLarge (413)   ├── UnsupportedMediaType (415)
    │   ├── Invalid (422 invalid_request)
    │   ├── QuotaExceeded (429 quota_exceeded)   a tenant's quota (app.services.quotas)
    │   ├── RateLimited (429 rate_limited)       an API key's rate, with Retry-After (app.services.rate_limit)
    │   └── InternalError (500 internal_error)
    ├── SchemaBehind    the database is not migrated to this code (/readyz answers 503 not_ready)
    └── LeaseLost       a worker's job was taken over by another worker (it stops, writing nothing)

Services raise them; app/api/errors.py turns them (and FastAPI's own errors) into the one
JSON error shape. Errors of the ML package are under models.errors.StagecraftError, and
`from_model_error` is the one place that turns them into the service's.
"""

from __future__ import annotations

import math
from typing import Any

from models.errors import DataError, SpecError, TooDeep


class ServiceError(Exception):
    """An error a client can act on; the routes let it through to `service_error_handler`."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        if code is not None:
            self.code = code


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class TimeLimitExceeded(ServiceError):
    status, code = 408, "time_limit_exceeded"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class Invalid(ServiceError):
    status, code = 422, "invalid_request"


class QuotaExceeded(ServiceError):
    status, code = 429, "quota_exceeded"


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"

    def __init__(self, wait_s: float):
        super().__init__(f"too many requests with this API key: retry in {wait_s:.1f} s (setting RATE_LIMIT_PER_S)")
        self.headers = {"Retry-After": str(max(1, math.ceil(wait_s)))}


class InternalError(ServiceError):
    """Our failure, not the caller's (a generation that broke, say); the cause is logged."""

    status, code = 500, "internal_error"


class SchemaBehind(Exception):
    """The database schema is not at this code's revision (the message says what to run)."""


class LeaseLost(Exception):
    """Another worker owns the job now; this one must stop without writing anything."""


def from_model_error(exc: Exception, loc: str = "body", message: str | None = None, *, file: str = "") -> ServiceError:
    """The service's error for one that `models` raised: the one translation, whichever
    service or route caught it. `loc` is what is at fault, `message` replaces str(exc) where
    the caller words it (without a server path, say), `file` names the file of an uploaded
    archive at fault (in the message and the detail, as app.services.model_checks does).

        loc "file", any error   422 unsupported_model  an uploaded model (what its loaders raise)
        SpecError               422 invalid_spec       details: its {loc, message}s
        DataError               422 invalid_dataset    details: its {line, field, reason}s
        TooDeep                 400 invalid_json       a request body nested too deeply
        any other               422 invalid_request    (ChatTemplateError: a prompt a template refuses)

    All but SpecError and DataError have the one detail {loc, message}."""
    text = str(exc) if message is None else message
    if loc == "file" and file:
        return Invalid(f"{file}: {text}", [{"loc": loc, "file": file, "message": text}], code="unsupported_model")
    detail = [{"loc": loc, "message": text}]
    if loc == "file":
        return Invalid(text, detail, code="unsupported_model")
    if isinstance(exc, SpecError):
        return Invalid(f"the job spec has {len(exc.errors)} error(s)", list(exc.errors), code="invalid_spec")
    if isinstance(exc, DataError):
        details = [{"line": i["line"], "field": i["field"], "reason": i["reason"]} for i in exc.issues]
        more = f" (showing the first {len(exc.issues)})" if exc.total > len(exc.issues) else ""
        return Invalid(f"{exc.source}: {exc.total} problem(s) in the data{more}", details, code="invalid_dataset")
    if isinstance(exc, TooDeep):
        return ServiceError(text, detail, code="invalid_json")
    return Invalid(text, detail)
