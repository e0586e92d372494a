"""The API in process (starlette's TestClient: the real app, lifespan included) over the
`database` fixture (SQLite and PostgreSQL in turn), with a key of a tenant of its own."""

from __future__ import annotations

import io
import secrets
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.services import auth
from models.data.tokenizer import Tokenizer
from models.formats.native import save_model
from tests.conftest import tiny_model


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The error of a response, after checking its status and code."""
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


class Client(TestClient):
    tenant_id: str


@pytest.fixture
def new_tenant(database: Database) -> Callable[[], tuple[dict[str, str], str]]:
    """A new tenant with a key: (its Authorization header, its tenant id)."""

    def make() -> tuple[dict[str, str], str]:
        name = f"t-{secrets.token_hex(6)}"
        with database.write() as session:
            key = auth.create_key(session, name)
            tenant_id = auth.get_or_create_tenant(session, name).id
            session.commit()
        return {"Authorization": f"Bearer {key}"}, tenant_id

    return make


@pytest.fixture
def client(settings: Settings, new_tenant: Callable[[], tuple[dict[str, str], str]]) -> Iterator[Client]:
    """The app, with a tenant's key as default header (`.tenant_id`); other tenants' requests
    pass their own header (one client: one event loop, as in a real server)."""
    headers, tenant_id = new_tenant()
    with Client(create_app(settings), headers=headers, raise_server_exceptions=False) as c:
        c.tenant_id = tenant_id
        yield c


Edit = Callable[[Path], object]


@pytest.fixture(scope="module")
def model_dir(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model as training saves it, with a long context (1024) for long generations."""
    d = tmp_path_factory.mktemp("upload") / "tiny"
    model = tiny_model(tokenizer.vocab_size, block_size=1024)
    save_model(d, model.state_dict(), model.config, tokenizer, {"name": "tiny"})
    return d


def archive(model_dir: Path, tmp_path: Path, edit: Edit | None = None) -> bytes:
    """A .tar.gz of a copy of `model_dir`, changed by `edit` first."""
    work = tmp_path / f"tiny-{secrets.token_hex(4)}"
    work.mkdir()
    for p in model_dir.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    if edit:
        edit(work)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p in sorted(work.iterdir()):
            t.add(p, f"tiny/{p.name}")
    return buf.getvalue()


def upload(client: TestClient, data: bytes, name: str = "m.tar.gz", headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/models", files={"file": (name, data)}, headers=headers)
