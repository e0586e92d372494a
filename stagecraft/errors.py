"""Exceptions. Every error response of the API becomes an `APIError` subclass chosen by its
HTTP status, carrying the API's `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from typing import Any

import httpx


class StagecraftError(Exception):
    """Base of everything this SDK raises."""


class ConfigurationError(StagecraftError):
    """No API key could be found (argument, STAGECRAFT_API_KEY, or the data directory's key file)."""


class APIConnectionError(StagecraftError):
    """The service could not be reached (after the retries), or the connection dropped."""

    def __init__(self, message: str, *, request_sent: bool = True):
        super().__init__(message)
        self.message = message
        self.request_sent = request_sent


class APIError(StagecraftError):
    """An error response. `code` is the API's machine-readable code (e.g. `invalid_spec`),
    `details` its list of findings (for a spec: `{loc, message}` with a dotted field path),
    `param` the one field at fault when there is one."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        retry_after: float | None = None,
        param: str | None = None,
    ):
        first = (details or [{}])[0]
        where = first.get("loc") or (f"line {first['line']}" if "line" in first else "")
        what = first.get("message") or first.get("reason") or ""
        hint = f" ({where}: {what})" if where and what and what not in message else ""
        super().__init__(f"{status_code} {code}: {message}{hint}")
        self.status_code, self.code, self.message = status_code, code, message
        self.details: list[dict[str, Any]] = details or []
        self.retry_after = retry_after
        self.param = param


class BadRequestError(APIError):
    """400: e.g. `invalid_json`."""


class AuthenticationError(APIError):
    """401: a missing or invalid API key."""


class PermissionDeniedError(APIError):
    """403."""


class NotFoundError(APIError):
    """404: no such object for this tenant (another tenant's objects look the same)."""


class ConflictError(APIError):
    """409: e.g. `job_finished`, `dataset_in_use`, `model_not_ready`, `idempotency_key_reused`."""


class PayloadTooLargeError(APIError):
    """413: an upload over the service's size cap."""


class UnsupportedMediaTypeError(APIError):
    """415."""


class UnprocessableEntityError(APIError):
    """422: `invalid_spec`, `invalid_dataset`, `invalid_request`, `context_length_exceeded`,
    `unsupported_model`; `details` lists every problem."""


class RateLimitError(APIError):
    """429 (retried with backoff, honoring Retry-After, before it is raised)."""


class InternalServerError(APIError):
    """5xx other than 503."""


class UnavailableError(APIError):
    """503: e.g. `not_ready` from /readyz (retried before it is raised)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: UnavailableError,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to the exponential backoff


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (its body must have been read)."""
    try:
        body = response.json()
        err = body["error"]
        code, message, details = str(err.get("code", "")), str(err.get("message", "")), err.get("details") or []
        param = err.get("param") if isinstance(err.get("param"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, details = "http_error", response.text[:500] or response.reason_phrase, []
        param = None
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIError)
    return cls(status, code, message, list(details), retry_after=_retry_after(response), param=param)
