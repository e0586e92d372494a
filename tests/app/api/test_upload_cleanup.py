"""Uploads in flight leave nothing behind: a client that disconnects mid-upload takes its
`.incoming` file with it at once; an API process killed mid-upload cannot, and the next API
start removes what it left once it is older than any live upload (app.services.incoming),
while an upload of the last hour (perhaps another process's, still streaming) stays."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.services import auth, incoming
from tests.system.processes import Proc, base_env, free_port, stagecraft, wait_ready

BOUNDARY = "b0undary"


def start_upload(url: str, key: str, declared: int, sent: int) -> socket.socket:
    """A dataset upload declaring `declared` bytes, of which `sent` are sent; the socket stays open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Length: "
            f"{declared}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n")  # fmt: skip
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'.encode()
    sock.sendall(head.encode() + part + b"word " * ((sent - len(part)) // 5))
    return sock


def wait_for(what: str, check: Callable[[], object], timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def in_flight(settings: Settings) -> list[Path]:
    return incoming.leftovers(settings)


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_client_gone_mid_upload_takes_its_file_with_it(
    settings: Settings, serve: Callable[[FastAPI], str], database: Database
) -> None:
    with database.write() as session:
        key = auth.create_key(session, "uploader")
        session.commit()
    url = serve(create_app(settings))
    sock = start_upload(url, key, 50 * 2**20, 3 * 2**20)
    wait_for("the upload to reach the disk", lambda: in_flight(settings))
    sock.close()
    wait_for("the upload's file to go", lambda: not in_flight(settings))


def test_the_api_start_sweeps_uploads_left_by_a_killed_process(settings: Settings) -> None:
    stale_s = incoming.STALE_S + 60
    tenant_dir = settings.datasets_dir / "tenant_x"
    models = settings.models_dir
    stale = [tenant_dir / ".incoming-up_old", models / ".incoming" / "up_old", models / ".incoming" / "up_old.d",
             models / "tenant_x" / ".model_old.partial"]  # fmt: skip
    fresh = [tenant_dir / ".incoming-up_new", settings.models_dir / ".incoming" / "up_new.d"]
    kept = [tenant_dir / "ds_old.txt", settings.models_dir / "tenant_x" / "model_old" / "config.json"]
    for path in stale + fresh + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith((".d", ".partial")):
            path.mkdir()
            (path / "inside.bin").write_bytes(b"x" * 10)
        else:
            path.write_bytes(b"x" * 10)
    for path in stale + kept:
        age(path, stale_s)
    with TestClient(create_app(settings)) as c:  # the sweep runs before the first request is served
        assert c.get("/healthz").status_code == 200
        assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
        assert all(p.exists() for p in fresh + kept)


def test_an_api_killed_mid_upload_leaves_nothing_for_ever(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{data / 'stagecraft.db'}"
    upgrade(db_url)
    db = Database(db_url)
    with db.write() as session:
        key = auth.create_key(session, "uploader")
        session.commit()
    db.dispose()
    settings = Settings(data_dir=data, database_url=db_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*stagecraft(), "api", "--port", str(port)]
    env = base_env(data_dir=str(data), database_url=db_url)
    api = Proc("api-killed", argv, env, tmp_path).start()
    try:
        wait_ready(url, [api])
        sock = start_upload(url, key, 50 * 2**20, 3 * 2**20)
        left = wait_for("the upload to reach the disk", lambda: in_flight(settings))
        api.stop(signal.SIGKILL)
        sock.close()
        assert in_flight(settings) == left  # nobody removed it: its process is gone
        api = Proc("api-restarted", argv, env, tmp_path).start()
        wait_ready(url, [api])
        assert in_flight(settings) == left  # too recent to be told from another process's live upload
        api.stop()
        for path in left:
            age(path, incoming.STALE_S + 60)  # an hour on
        api = Proc("api-later", argv, env, tmp_path).start()
        wait_ready(url, [api])
        assert in_flight(settings) == []
    finally:
        api.stop()
