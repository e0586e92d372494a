"""Error responses become the exception of their status family, with the API's fields, and
the retry policy waits what Retry-After asks (capped) before falling back to backoff."""

from __future__ import annotations

import httpx
import pytest
from tenacity import RetryCallState, Retrying

import stagecraft
from stagecraft._http import RetryPolicy
from stagecraft.errors import error_from_response


def response(status: int, body: object = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://test/v1/x")
    if body is None:
        return httpx.Response(status, text="plain failure", headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, stagecraft.BadRequestError),
        (401, stagecraft.AuthenticationError),
        (403, stagecraft.PermissionDeniedError),
        (404, stagecraft.NotFoundError),
        (409, stagecraft.ConflictError),
        (413, stagecraft.PayloadTooLargeError),
        (415, stagecraft.UnsupportedMediaTypeError),
        (422, stagecraft.UnprocessableEntityError),
        (429, stagecraft.RateLimitError),
        (500, stagecraft.InternalServerError),
        (502, stagecraft.InternalServerError),
        (503, stagecraft.UnavailableError),
        (418, stagecraft.APIError),
    ],
)
def test_status_families(status: int, cls: type[stagecraft.APIError]) -> None:
    details = [{"loc": "stages.0.steps", "message": "too small"}]
    err = error_from_response(response(status, {"error": {"code": "c", "message": "m", "details": details}}))
    assert type(err) is cls and isinstance(err, stagecraft.APIError)
    assert (err.status_code, err.code, err.message, err.details) == (status, "c", "m", details)
    assert err.param is None
    body = {"error": {"code": "c", "message": "m", "details": details, "param": "stages.0.steps"}}
    assert error_from_response(response(status, body)).param == "stages.0.steps"


def test_a_body_that_is_not_the_error_shape() -> None:
    err = error_from_response(response(502))
    assert (err.code, err.message, err.details) == ("http_error", "plain failure", [])


def wait_after(policy: RetryPolicy, exc: BaseException, attempt: int = 1) -> float:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return policy.wait(state)


def test_retry_after_is_honored_and_capped() -> None:
    policy = RetryPolicy(max_retries=3, backoff_s=0.5, max_backoff_s=8.0)
    limited = error_from_response(
        response(429, {"error": {"code": "rate_limited", "message": "slow"}}, **{"Retry-After": "3"})
    )
    assert limited.retry_after == 3.0 and wait_after(policy, limited) == 3.0
    huge = error_from_response(response(503, {"error": {"code": "x", "message": "y"}}, **{"Retry-After": "600"}))
    assert wait_after(policy, huge) == 8.0
    dated = error_from_response(
        response(503, {"error": {"code": "x", "message": "y"}}, **{"Retry-After": "Wed, 21 Oct"})
    )
    assert dated.retry_after is None and 0.5 <= wait_after(policy, dated, attempt=1) <= 1.0
    assert 2.0 <= wait_after(policy, dated, attempt=3) <= 2.5  # 0.5 · 2² + up to 0.5 of jitter
