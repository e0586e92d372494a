"""Engine and sessions.

SQLite gets WAL (readers never wait for the writer), a busy timeout, foreign keys, and
transactions we begin ourselves: pysqlite's own BEGIN is deferred, so a transaction that
reads and then writes can fail with "database is locked" without waiting. Sessions from
`Database.write` begin with BEGIN IMMEDIATE, which waits for the write lock up front;
`Database.read` sessions stay deferred so reads never contend with writes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

BUSY_TIMEOUT_MS = 30_000


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # no implicit BEGIN; see _sqlite_begin
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("stagecraft_write") else "BEGIN")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


class Database:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.read = sessionmaker(self.engine, expire_on_commit=False)
        self.write = sessionmaker(self.engine.execution_options(stagecraft_write=True), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


@lru_cache
def get_database(url: str | None = None) -> Database:
    return Database(url or get_settings().db_url)


__all__ = ["Database", "Session", "get_database", "make_engine"]


MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply the Alembic migrations up to `revision` (`stagecraft migrate`); `up` calls it on start."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS.parent / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().db_url).replace("%", "%%"))
    command.upgrade(cfg, revision)


@lru_cache
def code_heads() -> frozenset[str]:
    """The migration revisions this code's tables are declared at."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


def schema_problem(session: Session) -> str | None:
    """None when the database's schema is at this code's migration head; else what to do."""
    from alembic.migration import MigrationContext

    current = set(MigrationContext.configure(session.connection()).get_current_heads())
    if current == code_heads():
        return None
    at, needs = ", ".join(sorted(current)) or "no migration", ", ".join(sorted(code_heads()))
    return f"the database schema is at {at}, this code needs {needs}: run `stagecraft migrate`"
