"""Server-Sent Events messages: the one place their wire format is written."""

from __future__ import annotations

import json
from typing import Any

RETRY = "retry: 1000\n\n"  # a client reconnects after 1 s
KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"  # the end of an OpenAI-style stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def message(data: str, event: str | None = None, id: int | None = None) -> str:
    """One message; `data` is already serialized (one line of JSON)."""
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {data}\n\n"


def json_message(data: Any, event: str | None = None) -> str:
    return message(json.dumps(data), event)
