"""Engine and sessions.

SQLite gets WAL (readers never wait for the writer), a busy timeout, foreign keys, and
transactions we begin ourselves: pysqlite's own BEGIN is deferred, so a transaction that
reads and then writes can fail with "database is locked" without waiting. Sessions from
`Database.write` begin with BEGIN IMMEDIATE, which waits for the write lock up front;
`Database.read` sessions stay deferred so reads never contend with writes.

PostgreSQL connections are checked on checkout without a round trip (see `_pg_checkout`),
and `Database.autocommit` runs a single statement with no BEGIN / ROLLBACK around it: the
most polled read (`GET /v1/jobs/{id}`) costs one round trip instead of four.
"""

from __future__ import annotations

import select
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from app.config import get_settings

BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 40  # anyio's default thread limit: each of the API's threads can hold a connection
# PostgreSQL ends a session left idle inside a transaction this long. Our transactions are a few
# statements; one left open is a stalled process (SIGSTOP, a hung host), whose row locks would
# otherwise block every other worker's reaper on that job's row until it woke up.
IDLE_IN_TRANSACTION_S = 30
AUTOCOMMIT_POOL_SIZE = 8  # the threads GET /v1/jobs/{id} reads on (app.api.routes.jobs.POLL_THREADS)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # no implicit BEGIN; see _sqlite_begin
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("stagecraft_write") else "BEGIN")


def _pg_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """What `pool_pre_ping` finds out with a round trip per checkout, from the socket alone: an
    idle connection has nothing to read unless its server closed it (a restart, a terminated
    backend, an idle timeout: the server sends its notice and closes) or TCP keepalives found
    its peer gone (`_PG_KEEPALIVES`). Such a connection is discarded and the pool opens a new
    one (which fails, as an outage should, while the database refuses connections)."""
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("the connection is closed")
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception as exc:  # psycopg raises OperationalError for a closed connection
        raise DisconnectionError("the connection is closed") from exc
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)  # errors and hang-ups are always reported
        ready = bool(poller.poll(0))
    else:  # Windows
        readable, _, errored = select.select([fd], [], [fd], 0)
        ready = bool(readable or errored)
    if ready:
        raise DisconnectionError("the server closed the connection")


# libpq's TCP keepalives: a peer that vanished without closing (a host gone, a connection
# dropped by a firewall) is found within about a minute of idleness, not at the next query.
_PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _in_memory(url: str) -> bool:
    """An in-memory SQLite database: one per connection (per thread), not shared by engines."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


def make_engine(url: str, pool_size: int = POOL_SIZE, autocommit: bool = False) -> Engine:
    """Connections are opened as needed and kept, up to `pool_size` (no overflow: a connection
    opened past the pool and closed after one query costs more than the query); a thread that
    finds them all busy waits for one. `autocommit`: each statement is its own transaction
    (no BEGIN, nothing to roll back on return), for single-statement reads."""
    pool = {"pool_size": pool_size, "max_overflow": 0}
    if url.startswith("sqlite"):
        args = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        engine = create_engine(url, connect_args=args, **({} if _in_memory(url) else {"poolclass": QueuePool, **pool}))
        event.listen(engine, "connect", _sqlite_connect)
        if not autocommit:  # _sqlite_connect's isolation_level None is pysqlite's autocommit
            event.listen(engine, "begin", _sqlite_begin)
        return engine
    options = {"options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}", **_PG_KEEPALIVES}
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = create_engine(url, connect_args=options, **isolation, **pool)
    event.listen(engine, "checkout", _pg_checkout)
    return engine


class Database:
    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        self.engine = make_engine(url, pool_size)
        self.read = sessionmaker(self.engine, expire_on_commit=False)
        self.write = sessionmaker(self.engine.execution_options(stagecraft_write=True), expire_on_commit=False)
        # `with db.autocommit.connect() as conn:` statements outside transactions, on a pool of
        # their own (switching a pooled connection's isolation level costs on every checkout)
        self.autocommit = self.engine if _in_memory(url) else make_engine(url, AUTOCOMMIT_POOL_SIZE, autocommit=True)

    def dispose(self) -> None:
        """Close every pooled connection (tests dropping their database, processes exiting)."""
        for engine in {self.engine, self.autocommit}:
            engine.dispose()


@lru_cache
def get_database(url: str | None = None, pool_size: int = POOL_SIZE) -> Database:
    return Database(url or get_settings().db_url, pool_size)


__all__ = ["Database", "Session", "get_database", "make_engine"]
