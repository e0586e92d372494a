"""The API in process (starlette's TestClient: the real app, lifespan included) over the
`database` fixture (SQLite and PostgreSQL in turn), with a key of a tenant of its own; and
the same app served by uvicorn on a port of its own (`serve`), for what needs real sockets
and real concurrency."""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.services import auth
from models.data.tokenizer import Tokenizer
from models.formats.native import save_model
from tests.conftest import tiny_model
from tests.system.faults import PgDatabase
from tests.system.processes import free_port


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


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], str]]:
    """`serve(app)`: the app under uvicorn in a thread of this process, on a free port; its URL.
    Stopped (lifespan shutdown included) at the end of the test."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: FastAPI) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        running.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def own_database() -> Iterator[PgDatabase]:
    """A PostgreSQL database of this test's own, migrated, which `allow_connections(False)`
    makes unreachable to every process (an outage: new connections refused, open ones ended)."""
    db = PgDatabase()
    try:
        upgrade(db.url)
        yield db
    finally:
        db.drop()


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


def multipart(parts: list[tuple[str, str | None, bytes]]) -> dict[str, Any]:
    """A multipart/form-data body written by hand, as request arguments: any file name, byte
    for byte (a lone surrogate as its invalid UTF-8 bytes; httpx would escape a NUL)."""
    boundary = secrets.token_hex(8)
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass")
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content": out, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def upload(client: TestClient, data: bytes, name: str = "m.tar.gz", headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/models", files={"file": (name, data)}, headers=headers)
