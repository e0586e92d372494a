"""The service under test, twice: PostgreSQL + Redis + a separate API and worker process
(production), and `stagecraft up` with its defaults (SQLite, embedded broker)."""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis

from tests.service.stack import Api, Proc, base_env, example_data, free_port, run_cli, stagecraft, wait_ready

PG_ADMIN = os.environ.get("STAGECRAFT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("STAGECRAFT_TEST_REDIS", "redis://127.0.0.1:6379")
UPLOAD_LIMIT = 3_000_000  # above the example corpus (1.9 MB)
LEASE_S = 4  # short, so a killed worker's job is requeued within seconds
PROCS: list[Proc] = []  # every process started, for the failure report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for p in PROCS:
            report.sections.append((f"log of {p.name}", p.tail(3000)))


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_data(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"stagecraft_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    key: str
    logdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def api(self, key: str | None = None) -> Api:
        return Api(self.url, key or self.key)

    def new_key(self, tenant: str) -> str:
        proc = run_cli("keys", "create", "--tenant", tenant, env=self.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def start(self, name: str, *args: str) -> Proc:
        p = Proc(name, [*stagecraft(), *args], self.env, self.logdir).start()
        self.procs[name] = p
        PROCS.append(p)
        return p

    def start_api(self) -> Proc:
        return self.start("api", "api", "--port", self.url.rsplit(":", 1)[1])

    def wait_ready(self) -> None:
        wait_ready(self.url, list(self.procs.values()))

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop()


@pytest.fixture(scope="session")
def pg_stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`stagecraft migrate`, `stagecraft api` and `stagecraft worker` against PostgreSQL and Redis.

    A Redis database and queue of its own, so concurrent test sessions never share messages.
    """
    redis.Redis.from_url(REDIS).ping()
    root = tmp_path_factory.mktemp("pg-stack")
    port = free_port()
    env = base_env(
        data_dir=str(root / "data"),
        database_url=pg_url,
        broker_url=f"{REDIS}/{random.randint(1, 15)}",
        queue=f"train-{secrets.token_hex(4)}",
        max_upload_bytes=str(UPLOAD_LIMIT),
        lease_s=str(LEASE_S),
        url=f"http://127.0.0.1:{port}",
    )
    migrate = run_cli("migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    stack = Stack(f"http://127.0.0.1:{port}", env, "", root)
    stack.key = stack.new_key("alpha")
    stack.start_api()
    stack.start("worker", "worker")
    stack.wait_ready()
    yield stack
    stack.stop_all()
