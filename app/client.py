"""A small HTTP client for the service (used by `stagecraft jobs ...` and the benchmarks)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from models.events import FINAL


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[Any]):
        self.status, self.code, self.message, self.details = status, code, message, details
        super().__init__(f"{status} {code}: {message}")


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events as {id, event, data} dicts (comments and retry fields skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[key] = fields[key] + "\n" + value if key == "data" and key in fields else value


def raise_for(r: httpx.Response) -> None:
    """ApiError for an error response (the service's error shape), nothing otherwise."""
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        err = {"code": "http_error", "message": r.text[:500]}
    raise ApiError(r.status_code, err.get("code", ""), err.get("message", ""), err.get("details", []))


class Client:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        raise_for(r)
        return r.json()

    def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        with path.open("rb") as f:
            result: dict[str, Any] = self.request(
                "POST", "/v1/datasets", files={"file": (path.name, f)}, data={"name": name or path.name}
            )
        return result

    def events(self, job_id: str, after: int = 0, retry_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Follow a job's SSE stream to its final event, reconnecting with Last-Event-ID."""
        last = after
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(60.0, read=None)
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                        self.request("GET", f"/v1/jobs/{job_id}")  # raises the error
                    for msg in parse_sse(r.iter_lines()):
                        event: dict[str, Any] = json.loads(msg["data"])
                        last = event["seq"]
                        yield event
                        if event["type"] in FINAL:
                            return
            except httpx.TransportError:
                pass  # the server restarted or the network dropped: resume after `last`
            time.sleep(retry_s)

    def generate_stream(self, model_id: str, body: dict[str, Any]) -> Iterator[str]:
        """The text pieces of a streamed `POST /v1/models/{id}/generate`."""
        timeout = httpx.Timeout(60.0, read=None)
        with self.http.stream("POST", f"/v1/models/{model_id}/generate", json=body, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                raise_for(r)
            for msg in parse_sse(r.iter_lines()):
                data = json.loads(msg["data"])
                if msg.get("event") == "error":
                    err = data["error"]
                    raise ApiError(500, err.get("code", ""), err.get("message", ""), [])
                if msg.get("event") == "token":
                    yield str(data["text"])
