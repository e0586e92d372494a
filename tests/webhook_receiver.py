"""A webhook receiver for the tests: a real HTTP server on loopback, on a thread, that records
every request and answers the statuses it is given in turn (then 200), and the signature
check docs/api.md ("Webhooks") tells receivers to make."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> dict[str, Any]:
    """What a receiver does (docs/api.md): recompute the signature over `{timestamp}.{body}`,
    compare in constant time, refuse an old timestamp; the event, once verified."""
    timestamp = headers["stagecraft-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["stagecraft-signature"], f"v1={expected}"), "bad signature"
    assert abs(time.time() - int(timestamp)) < tolerance_s, "stale timestamp"
    event: dict[str, Any] = json.loads(body)
    return event


class Receiver:
    """`with Receiver([500, 500]) as r:` answers 500, 500, then 200; `r.url`, `r.received`.
    `delay_s` holds each answer back (a slow target); `location` makes 3xx answers redirect there."""

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0, location: str = "") -> None:
        self.statuses = list(statuses or [])
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    receiver.received.append(got)
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(delay_s)
                answer = b'{"ok": true}' if status < 300 else b"the receiver says no"
                try:
                    self.send_response(status)
                    if location and 300 <= status < 400:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):  # a sender that gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def wait_for(self, n: int, timeout_s: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < n:
            assert time.monotonic() < deadline, f"{len(self.received)} of {n} deliveries after {timeout_s} s"
            time.sleep(0.05)
        return list(self.received)
