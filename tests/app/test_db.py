"""app.db against the real databases: autocommit reads open no transaction, and a pooled
PostgreSQL connection whose server side went away is replaced on checkout, not handed out."""

from __future__ import annotations

import time

import psycopg
from sqlalchemy import select, text

from app.db import Database
from app.tables import Job
from tests.conftest import PG_ADMIN


def in_transaction(dbapi_conn: object) -> bool:
    if isinstance(dbapi_conn, psycopg.Connection):
        return dbapi_conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    return bool(dbapi_conn.in_transaction)  # type: ignore[attr-defined]


def test_autocommit_reads_open_no_transaction(database: Database) -> None:
    """`Database.autocommit` runs its statement alone (no BEGIN, nothing to roll back); the
    read and write sessions still run theirs inside transactions."""
    with database.autocommit.connect() as conn:
        conn.execute(select(Job.id).limit(1)).all()
        assert not in_transaction(conn.connection.dbapi_connection)
    for _ in range(3):  # the pool hands the same connections out again
        with database.read() as session:
            session.execute(select(Job.id).limit(1)).all()
            assert in_transaction(session.connection().connection.dbapi_connection)
        with database.write() as session:
            session.execute(select(Job.id).limit(1)).all()
            assert in_transaction(session.connection().connection.dbapi_connection)


def test_a_connection_whose_backend_ended_is_replaced_on_checkout(pg_url: str) -> None:
    """The server ends a pooled connection's session while it sits idle (a terminated backend,
    as in an outage or a restart): the next checkout notices without a query and opens another,
    so the caller's statement succeeds."""
    db = Database(pg_url, pool_size=1)
    try:
        for checkout in (db.autocommit.connect, db.read):
            with checkout() as first:
                pid = first.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
                deadline = time.monotonic() + 10
                while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                    assert time.monotonic() < deadline, "the backend did not end"
                    time.sleep(0.05)
            with checkout() as again:
                assert again.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        db.dispose()
