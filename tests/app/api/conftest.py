"""The API in process (starlette's TestClient: the real app, lifespan included) over the
`database` fixture (SQLite and PostgreSQL in turn), with a key of a tenant of its own."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.services import auth


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The error of a response, after checking its status and code."""
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


class Client(TestClient):
    tenant_id: str


@pytest.fixture
def new_client(database: Database, settings: Settings) -> Iterator[Callable[[], Client]]:
    """Clients of the one app, each with a key of a new tenant (`.tenant_id`)."""
    app = create_app(settings)
    made: list[Client] = []

    def make() -> Client:
        name = f"t-{secrets.token_hex(6)}"
        with database.write() as session:
            key = auth.create_key(session, name)
            tenant_id = auth.get_or_create_tenant(session, name).id
            session.commit()
        c = Client(app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)
        c.tenant_id = tenant_id
        c.__enter__()
        made.append(c)
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)


@pytest.fixture
def client(new_client: Callable[[], Client]) -> Client:
    return new_client()
