"""The messages between run_processes (models/training/launch.py) and rank 0 of its processes
(models/training/rank.py): JSON objects, one per line, over a Unix domain socket (no pickle).

rank 0 to the parent:
    {"type": "event", "event": {...}}                                   for on_event
    {"type": "publish", "staged": path, "final": path, "event": {...}}  for publish; rank 0 waits
    and, last, one of
    {"type": "result", "model_dir": path, "steps": n, "evaluation": {...}}
    {"type": "stopped", "step": n}
    {"type": "error", "code": code, "message": text}

the parent to rank 0:
    {"type": "stop"}                                                    should_stop() said so
    {"type": "published"} or {"type": "publish_failed"}                 publish's answer
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

Message = dict[str, Any]


class Channel:
    """One end of the socket: whole messages out (from any thread), whole lines in."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = b""
        self.sending = threading.Lock()

    def send(self, message: Message) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self.sending:
            self.sock.sendall(data)

    def receive(self) -> list[Message]:
        """The messages completed by the next bytes to arrive; [] when the socket's timeout
        passes first. EOFError once the other end has closed."""
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return []
        if not data:
            raise EOFError("the other end closed the connection")
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        self.sock.close()
