"""Fixtures of the whole-system tests: the service as real processes, twice. PostgreSQL +
Redis + a separate API and worker process (production), and `stagecraft up` with its
defaults (SQLite, embedded broker) with a tiny model trained through it. The logs of every
process started are attached to a failing test's report."""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready
from tests.system.stack import LEASE_S, PROCS, UPLOAD_LIMIT, Api, Served, Stack, example_data, tiny_spec

REDIS = os.environ.get("STAGECRAFT_TEST_REDIS", "redis://127.0.0.1:6379")


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
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`stagecraft migrate`, `stagecraft api` and `stagecraft worker` against PostgreSQL and Redis.

    A PostgreSQL database of its own (its worker never sees the jobs the in-process tests
    leave queued in theirs), and a Redis database and queue of its own, so concurrent test
    sessions never share messages.
    """
    from tests.system.faults import PgDatabase

    pg = PgDatabase()
    try:
        yield from _pg_stack(pg.url, tmp_path_factory.mktemp("pg-stack"), {})
    finally:
        pg.drop()


@pytest.fixture(scope="session")
def pg_s3_stack(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[Stack]:
    """The same with its artifacts in an S3 bucket (moto's server, tests/s3.py), and a
    PostgreSQL database of its own too."""
    from tests.system.faults import PgDatabase

    bucket = f"stack-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    pg = PgDatabase()
    try:
        extra = {**s3_server.env(), "STAGECRAFT_STORAGE_URL": f"s3://{bucket}/artifacts"}
        yield from _pg_stack(pg.url, tmp_path_factory.mktemp("pg-s3-stack"), extra)
    finally:
        pg.drop()


def _pg_stack(db_url: str, root: Path, extra_env: dict[str, str]) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS).ping()
    port = free_port()
    env = base_env(
        data_dir=str(root / "data"),
        database_url=db_url,
        broker_url=f"{REDIS}/{random.randint(1, 15)}",
        queue=f"train-{secrets.token_hex(4)}",
        max_upload_bytes=str(UPLOAD_LIMIT),
        lease_s=str(LEASE_S),
        url=f"http://127.0.0.1:{port}",
    )
    env.update(extra_env)
    migrate = run_cli("migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    stack = Stack(f"http://127.0.0.1:{port}", env, "", root)
    stack.key = stack.new_key("alpha")
    stack.start_api()
    stack.start("worker", "worker")
    stack.wait_ready()
    yield stack
    stack.stop_all()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, example_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(url=url)
    proc = Proc("up-serving", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], env, root)
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        key = (root / "data" / "api_key").read_text().strip()
        with Api(url, key) as api:
            datasets = api.upload_examples(example_dir)
            job = api.submit(tiny_spec(datasets))
            events = api.follow(job["id"])
            assert events[-1]["type"] == "job.succeeded", events[-1]
            job = api.job(job["id"])
        yield Served(url, root / "data", {**env, "STAGECRAFT_API_KEY": key}, key, datasets, job)
    finally:
        proc.stop()
