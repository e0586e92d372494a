"""The service's log lines: one configuration (`configure`) for `stagecraft api`, `up` and the
workers, through structlog.

Every line has a timestamp, level, logger and message, and what its context knows: the
request id (`request_id`: the API request's; on a worker, that of the request that created
the job), `job_id`, `tenant` and, on a worker, `worker`. On a terminal the lines are
readable (structlog's ConsoleRenderer); otherwise, or with STAGECRAFT_LOG_FORMAT=json, each
is one JSON object. The standard library's records (ours, uvicorn's, Celery's) go through
the same formatter (structlog's ProcessorFormatter); `extra={...}` fields become keys.

The context is structlog.contextvars: bound per request (app.api.request_context) and per
job (workers.tasks, workers.execute); a thread working for either runs in a copy of it.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REQUEST_ID_HEADER = "X-Request-ID"
_TOKEN = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII without spaces, at most 128 characters
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")  # loggers uvicorn gives handlers of its own
# A line per HTTP call, per Alembic plugin and step at INFO: only their warnings (the CLI says what it migrated).
QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "alembic": logging.WARNING}


def request_id(value: str | None) -> str:
    """The caller's X-Request-ID if it is a bounded printable token; otherwise a new one."""
    if value is not None and _TOKEN.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current(key: str) -> Any:
    """A value bound in this context (None if none is)."""
    return structlog.contextvars.get_contextvars().get(key)


def bind(**values: Any) -> None:
    """Bind the values that are not None for the rest of this context."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


@contextmanager
def scope(**values: Any) -> Iterator[None]:
    """Bind `values` for the block; what the block binds besides ends with it too."""
    before = structlog.contextvars.get_contextvars()
    bind(**values)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**before)


def wants_json(fmt: str, stream: IO[str] | None = None) -> bool:
    """json, console, or auto: JSON unless the stream is a terminal."""
    if fmt in ("json", "console"):
        return fmt == "json"
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    try:
        return not (isatty is not None and isatty())
    except ValueError:  # a closed stream
        return True


def _drop_color_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)  # uvicorn's colored copy of the message
    return event


def _first_keys(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    head = {k: event.pop(k) for k in ("timestamp", "level", "logger", "message") if k in event}
    return {**head, **event}


def _static(values: Mapping[str, Any]) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in values.items():
            event.setdefault(key, value)
        return event

    return add


def _shared(static: Mapping[str, Any] | None) -> list[Processor]:
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    return chain + ([_static(static)] if static else [])


def formatter(
    fmt: str = "auto", stream: IO[str] | None = None, static: Mapping[str, Any] | None = None
) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of every line: JSON or readable (see `wants_json`); `static` adds keys to
    every line (a worker's id)."""
    renderer: list[Processor]
    if wants_json(fmt, stream):
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            _first_keys,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        colors = bool(getattr(stream or sys.stderr, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ
        renderer = [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)]
    foreign: list[Processor] = [*_shared(static), structlog.stdlib.ExtraAdder(), _drop_color_message]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


class _Handler(logging.StreamHandler[IO[str]]):
    """Ours: a second `configure` replaces it, and leaves other handlers (a test's) alone."""


def configure(
    fmt: str = "auto",
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    static: Mapping[str, Any] | None = None,
) -> None:
    """Send every record of this process at `level` and above to `stream` (stderr), through
    `formatter`; uvicorn's loggers propagate to it. structlog's own loggers go the same way."""
    stream = stream if stream is not None else sys.stderr
    handler = _Handler(stream)
    handler.setFormatter(formatter(fmt, stream, static))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn lines too (logger py.warnings)
    for name in UVICORN:
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)
    structlog.configure(
        processors=[
            *_shared(static),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def dict_config(fmt: str = "auto") -> dict[str, Any]:
    """`configure` as a logging.config.dictConfig dictionary: for uvicorn's own worker processes
    (`uvicorn.run(..., log_config=...)`), which configure logging themselves."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"stagecraft": {"()": "app.logs.formatter", "fmt": fmt}},
        "handlers": {"stderr": {"class": "app.logs._Handler", "formatter": "stagecraft", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN},
    }
