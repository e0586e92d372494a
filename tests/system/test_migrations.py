"""The Alembic migrations create exactly the tables app/tables.py declares, and the API
does not call itself ready on a database they have not brought to head."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.migrate import upgrade
from app.tables import Base
from tests.system.processes import READY_TIMEOUT_S, Proc, base_env, free_port, run_cli, stagecraft
from tests.system.stack import Stack


def assert_no_diff(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert ctx.get_current_revision() is not None, "migrations were not applied"
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"tables and migrations disagree: {diff}"


def test_sqlite_migrations_match_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    assert_no_diff(url)


def test_postgres_migrations_match_tables(pg_stack: Stack) -> None:
    """pg_stack ran `stagecraft migrate` on its database."""
    assert_no_diff(pg_stack.env["STAGECRAFT_DATABASE_URL"])


@pytest.mark.parametrize("table", sorted(Base.metadata.tables))
def test_every_table_is_in_a_migration(table: str) -> None:
    text = "".join(p.read_text() for p in (Path(__file__).parents[2] / "migrations" / "versions").glob("*.py"))
    assert f"'{table}'" in text or f'"{table}"' in text


def test_readyz_reports_an_unmigrated_database_until_stagecraft_migrate(tmp_path: Path) -> None:
    """`stagecraft api` over HTTP against a database one migration behind: /readyz is 503 and
    says what to run; after `stagecraft migrate` it is ready."""
    env = base_env(data_dir=str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    upgrade(f"sqlite:///{tmp_path / 'data' / 'stagecraft.db'}", "0001")
    port = free_port()
    api = Proc("api", [*stagecraft(), "api", "--port", str(port)], env, tmp_path).start()
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                r = httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and api.popen is not None and api.popen.poll() is None, api.tail()
                time.sleep(0.2)
        assert r.status_code == 503
        problems = r.json()["error"]["details"]
        assert [p["component"] for p in problems] == ["database"]
        assert "at 0001" in problems[0]["message"] and "stagecraft migrate" in problems[0]["message"]
        assert run_cli("migrate", env=env).returncode == 0
        assert httpx.get(url, timeout=5).json() == {"status": "ready"}
    finally:
        api.stop()
