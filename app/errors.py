"""The service's errors: each carries the HTTP status and `code` a client sees.

    ServiceError (400 bad_request)
    ├── Unauthorized (401)   ├── NotFound (404)   ├── Conflict (409)
    ├── PayloadTooLarge (413)   ├── UnsupportedMediaType (415)
    ├── Invalid (422 invalid_request)
    └── InternalError (500 internal_error)

Services raise them; app/api/errors.py turns them (and FastAPI's own errors) into the one
JSON error shape. Errors of the ML package are under models.errors.StagecraftError.
"""

from __future__ import annotations

from typing import Any


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


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class Invalid(ServiceError):
    status, code = 422, "invalid_request"


class InternalError(ServiceError):
    """Our failure, not the caller's (a generation that broke, say); the cause is logged."""

    status, code = 500, "internal_error"
