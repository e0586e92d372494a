"""Engine and sessions.

SQLite gets WAL (readers never wait for the writer), a busy timeout, foreign keys, and
transactions we begin ourselves: pysqlite's own BEGIN is deferred, so a transaction that
reads and then writes can fail with "database is locked" without waiting. Sessions from
`Database.write` begin with BEGIN IMMEDIATE, which waits for the write lock up front;
`Database.read` sessions stay deferred so reads never contend with writes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from app.config import get_settings

BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 40  # anyio's default thread limit: each of the API's threads can hold a connection
# PostgreSQL ends a session left idle inside a transaction this long. Our transactions are a few
# statements; one left open is a stalled process (SIGSTOP, a hung host), whose row locks would
# otherwise block every other worker's reaper on that job's row until it woke up.
IDLE_IN_TRANSACTION_S = 30


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # no implicit BEGIN; see _sqlite_begin
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("stagecraft_write") else "BEGIN")


def make_engine(url: str, pool_size: int = POOL_SIZE) -> Engine:
    """Connections are opened as needed and kept, up to `pool_size` (no overflow: a connection
    opened past the pool and closed after one query costs more than the query); a thread that
    finds them all busy waits for one."""
    pool = {"pool_size": pool_size, "max_overflow": 0}
    if url.startswith("sqlite"):
        args = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        in_memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url  # one connection per thread
        engine = create_engine(url, connect_args=args, **({} if in_memory else {"poolclass": QueuePool, **pool}))
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    options = {"options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}"}
    return create_engine(url, pool_pre_ping=True, connect_args=options, **pool)


class Database:
    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        self.engine = make_engine(url, pool_size)
        self.read = sessionmaker(self.engine, expire_on_commit=False)
        self.write = sessionmaker(self.engine.execution_options(stagecraft_write=True), expire_on_commit=False)


@lru_cache
def get_database(url: str | None = None, pool_size: int = POOL_SIZE) -> Database:
    return Database(url or get_settings().db_url, pool_size)


__all__ = ["Database", "Session", "get_database", "make_engine"]
