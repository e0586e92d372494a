"""The transport: one httpx.Client, errors turned into exceptions, and retries.

Retried, with exponential backoff and jitter (tenacity), honoring a Retry-After header:
  - connection failures before the request was sent (refused, DNS, connect timeout): always;
  - 429 and 503 answers: always (the service did nothing);
  - a connection that broke after the request was sent: only for requests that are safe
    to repeat (GET, DELETE, and POSTs marked `idempotent`, such as a job creation that
    carries an Idempotency-Key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from stagecraft.errors import APIConnectionError, APIError, RateLimitError, UnavailableError, error_from_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
USER_AGENT = "stagecraft-python"


class RetryPolicy:
    """`max_retries` retries after the first attempt; waits grow from `backoff_s` up to `max_backoff_s`."""

    def __init__(self, max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 8.0):
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        # backoff_s, 2·backoff_s, 4·backoff_s ... capped, plus up to backoff_s of jitter.
        self._backoff = wait_exponential(multiplier=backoff_s, max=max_backoff_s) + wait_random(0, backoff_s)

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_backoff_s)
        return float(self._backoff(state))

    def retrying(self, idempotent: bool) -> Retrying:
        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, RateLimitError | UnavailableError):
                return True
            if isinstance(exc, APIConnectionError):
                return not exc.request_sent or idempotent
            return False

        return Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait,
            retry=retry_if_exception(retryable),
            reraise=True,
        )


class Transport:
    def __init__(self, url: str, api_key: str, timeout: float, retry: RetryPolicy, http: httpx.Client | None = None):
        self.url, self.retry = url, retry
        headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        if http is None:
            http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        else:  # the caller's client (proxies, certificates, transports): pointed at the service
            http.base_url = httpx.URL(url)
            http.headers.update(headers)
        self.http = http

    def close(self) -> None:
        self.http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | float | None = None,
        build: Callable[[], Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response to a request, retried per the policy; an APIError for an error status.

        `build` returns extra request arguments anew for every attempt (an upload reopens its
        file). With `stream`, the caller reads and closes the response.
        """
        safe = method.upper() in SAFE_METHODS if idempotent is None else idempotent
        for attempt in self.retry.retrying(safe):
            with attempt:
                return self._once(method, path, stream, timeout, {**kwargs, **(build() if build else {})})
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _once(
        self, method: str, path: str, stream: bool, timeout: httpx.Timeout | float | None, kwargs: dict[str, Any]
    ) -> httpx.Response:
        if timeout is not None:
            kwargs["timeout"] = timeout
        request = self.http.build_request(method, path, **kwargs)
        try:
            response = self.http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise APIConnectionError(f"cannot reach {self.url}: {exc}", request_sent=False) from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"connection to {self.url} failed: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise error_from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise APIConnectionError(f"{method} {path}: the answer is not JSON: {response.text[:200]!r}") from exc

    def upload(self, path: str, file: str | Path, name: str | None, timeout: httpx.Timeout | float) -> Any:
        """POST a multipart `file` (+ `name`): the JSON answer. The file is reopened for every
        attempt; once sent it is not retried (a second upload would make a second object)."""
        source = Path(file)
        opened: list[Any] = []

        def parts() -> dict[str, Any]:
            while opened:
                opened.pop().close()
            f = source.open("rb")
            opened.append(f)
            return {"files": {"file": (source.name, f)}, "data": {"name": name or source.name}}

        try:
            return self.json("POST", path, idempotent=False, build=parts, timeout=timeout)
        finally:
            while opened:
                opened.pop().close()
