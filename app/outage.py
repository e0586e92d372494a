"""Telling "the database is unreachable" from other failures, and logging an outage once.

The API answers 503 `unavailable` for these (app.api.errors); the worker keeps its events in
memory and retries, with one log line when the outage starts and one when it ends, not a
traceback per retry.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, TimeoutError


def unreachable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached (or is refusing connections)
    now, rather than a wrong statement."""
    if isinstance(exc, OperationalError | InterfaceError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class OutageLog:
    """One warning when `what` becomes unreachable, one info line when it is back."""

    def __init__(self, log: logging.Logger, what: str):
        self.log, self.what = log, what
        self.since: float | None = None

    def failed(self, exc: BaseException, doing: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s unreachable while %s (%s); retrying quietly", self.what, doing, type(exc).__name__)

    def ok(self) -> None:
        if self.since is not None:
            self.log.warning("%s reachable again after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None
