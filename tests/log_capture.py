"""The service's logging (app/logs.py) configured onto a buffer for the length of a test, and
put back as it was after: the root logger's handlers and level, structlog's configuration."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from app import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextmanager
def captured(fmt: str = "auto", tty: bool = False, **static: Any) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = Terminal() if tty else io.StringIO()
    logs.configure(fmt, stream=stream, static=static or None)
    try:
        yield stream
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
