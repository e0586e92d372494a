"""`stagecraft.Client`: the entry point."""

from __future__ import annotations

import time
from typing import Any

import httpx

from stagecraft._config import resolve_api_key, resolve_url
from stagecraft._http import RetryPolicy, Transport
from stagecraft._resources.datasets import Datasets
from stagecraft._resources.jobs import Jobs
from stagecraft._resources.models import Models
from stagecraft.errors import APIConnectionError, UnavailableError


class Client:
    """A synchronous client of a Stagecraft service.

    `url` defaults to $STAGECRAFT_URL, then http://127.0.0.1:8000; `api_key` to
    $STAGECRAFT_API_KEY, then the key file `stagecraft up` writes (DATA_DIR/api_key, DATA_DIR
    being $STAGECRAFT_DATA_DIR or ~/.stagecraft). Connection failures and 429/503 answers are
    retried `max_retries` times with exponential backoff (from `backoff_s`, at most
    `max_backoff_s`, or what Retry-After asks). Use it as a context manager, or call close().
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        http_client: httpx.Client | None = None,
    ):
        self.url = resolve_url(url)
        self._transport = Transport(
            self.url, resolve_api_key(api_key), timeout, RetryPolicy(max_retries, backoff_s, max_backoff_s), http_client
        )
        self.datasets = Datasets(self._transport)
        self.jobs = Jobs(self._transport)
        self.models = Models(self._transport)

    def health(self) -> dict[str, Any]:
        """GET /healthz: the API process answers (no key needed)."""
        body: dict[str, Any] = self._transport.json("GET", "/healthz")
        return body

    def ready(self) -> dict[str, Any]:
        """GET /readyz: the database (migrated) and the broker are reachable. Retried while it
        answers 503; then UnavailableError (`not_ready`, details name each component)."""
        body: dict[str, Any] = self._transport.json("GET", "/readyz")
        return body

    def wait_until_ready(self, timeout: float = 60.0, interval_s: float = 0.5) -> None:
        """Block until /readyz answers 200 (a service just started), or raise its last error."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ready()
                return
            except (APIConnectionError, UnavailableError):
                if time.monotonic() >= deadline:
                    raise
            time.sleep(interval_s)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
