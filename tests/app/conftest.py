"""In-process tests of the app against a real database (`database`, from tests/conftest.py:
a SQLite file and PostgreSQL in turn): settings, a tenant of the test's own, jobs."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.services import auth, lifecycle
from app.tables import Job


@pytest.fixture
def settings(database: Database, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database.engine.url.render_as_string(hide_password=False),
        lease_s=30.0,
        max_attempts=2,
    )


@pytest.fixture
def tenant(database: Database) -> str:
    """A tenant of this test alone (the database is shared by the session's tests)."""
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        session.commit()
    return tenant_id


@pytest.fixture
def new_job(database: Database, tenant: str) -> Callable[..., str]:
    """Create a queued job (committed) and return its id."""

    def make(spec: dict[str, Any] | None = None, key: str | None = None) -> str:
        with database.write() as session:
            job, created = lifecycle.create(session, tenant, "job", spec or {"name": "job"}, {}, 10, key)
            assert created
            session.commit()
            return job.id

    return make


@pytest.fixture
def job_of(database: Database) -> Callable[[str], Job]:
    """The job's row as committed now."""

    def read(job_id: str) -> Job:
        with database.read() as session:
            return session.get_one(Job, job_id)

    return read
