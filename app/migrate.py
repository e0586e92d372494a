"""Alembic migrations: apply them (`stagecraft migrate`, and `up` on start) and tell whether a
database's schema is at this code's head (`/readyz`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import get_settings

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
