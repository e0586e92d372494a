"""The Alembic migrations create exactly the tables app/tables.py declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.db import upgrade
from app.tables import Base


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


def test_postgres_migrations_match_tables(pg_stack: object, pg_url: str) -> None:
    """pg_stack ran `stagecraft migrate` on this database."""
    assert_no_diff(pg_url)


@pytest.mark.parametrize("table", sorted(Base.metadata.tables))
def test_every_table_is_in_a_migration(table: str) -> None:
    text = "".join(p.read_text() for p in (Path(__file__).parents[2] / "migrations" / "versions").glob("*.py"))
    assert f"'{table}'" in text or f'"{table}"' in text
