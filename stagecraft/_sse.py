"""Server-Sent Events: parsing, and a job's event stream that survives dropped connections."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx

from stagecraft._http import Transport
from stagecraft.errors import APIConnectionError
from stagecraft.types import FINISHED_STATUSES, Event

# The server sends a comment every 15 s while a job is quiet; a read this much longer means
# the connection is dead, so it is dropped and resumed.
READ_TIMEOUT_S = 60.0
QUIET_RECONNECT_S = 0.5


@dataclass
class Message:
    event: str = "message"
    data: str = ""
    id: str | None = None


def parse(lines: Iterable[str]) -> Iterator[Message]:
    """Messages from SSE lines (https://html.spec.whatwg.org/multipage/server-sent-events.html):
    `field: value` lines, a blank line ends a message, `:` lines are comments."""
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Message(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            last_id = value
    if data:
        yield Message(event or "message", "\n".join(data), last_id)


def _finished(transport: Transport, job_id: str) -> bool:
    return transport.json("GET", f"/v1/jobs/{job_id}").get("status") in FINISHED_STATUSES


def job_events(transport: Transport, job_id: str, after: int = 0, max_drops: int | None = None) -> Iterator[Event]:
    """Every event of a job after seq `after`, live, until the final one.

    The stream is reopened with `Last-Event-ID: <last seq seen>` whenever it ends early: a
    dropped connection, or a server that closed it while shutting down. No event is lost or
    repeated. Opening it uses the transport's retries (a restarting server is waited for).
    It ends when a stream closes without a new event and the job has ended, or after
    `max_drops` (default: the retry policy's max_retries) broken connections in a row.
    """
    limit = transport.retry.max_retries if max_drops is None else max_drops
    last, drops = after, 0
    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_S)
    while True:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
        response = transport.send("GET", f"/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=timeout)
        received = 0
        try:
            for message in parse(response.iter_lines()):
                event = Event.model_validate(json.loads(message.data))
                last, drops, received = event.seq, 0, received + 1
                yield event
                if event.final:
                    return
            if received == 0 and _finished(transport, job_id):
                return  # closed with nothing new: the job has ended (its final event is before `after`)
            if received == 0:
                time.sleep(QUIET_RECONNECT_S)  # closed while the server shuts down: try again shortly
        except httpx.TransportError as exc:
            drops += 1
            if drops > limit:
                raise APIConnectionError(f"the event stream of {job_id} kept dropping: {exc!r}") from exc
        finally:
            response.close()
