"""TENANT_MAX_RUNNING_JOBS over real processes (PostgreSQL, Redis, `stagecraft api`, two
`stagecraft worker`s): a tenant allowed one running job never runs two at once, however
many workers are free, and its queued job does not stall another tenant's."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.system.conftest import REDIS
from tests.system.faults import PgDatabase
from tests.system.processes import base_env, free_port, run_cli
from tests.system.stack import LEASE_S, Api, Stack, example_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS).ping()
    pg = PgDatabase()  # of its own: its workers see no other test's queued jobs
    port = free_port()
    env = base_env(
        data_dir=str(tmp_path / "data"),
        database_url=pg.url,
        broker_url=f"{REDIS}/{random.randint(1, 15)}",
        queue=f"train-{secrets.token_hex(4)}",
        lease_s=str(LEASE_S),
        url=f"http://127.0.0.1:{port}",
        tenant_max_running_jobs="1",
        tenant_busy_retry_s="1",
        resend_unclaimed_s="5",
    )
    try:
        assert run_cli("migrate", env=env).returncode == 0
        s = Stack(f"http://127.0.0.1:{port}", env, "", tmp_path)
        s.start_api()
        s.start("worker1", "worker")
        s.start("worker2", "worker")
        s.wait_ready()
        yield s
        s.stop_all()
    finally:
        pg.drop()


def ran(api: Api, job_id: str) -> tuple[float, float]:
    """When the job's (only) attempt started and when it finished, as timestamps."""
    deadline = time.monotonic() + 300
    while (job := api.job(job_id))["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    started = [e for e in api.follow(job_id) if e["type"] == "job.started"]
    assert len(started) == 1, started
    start, end = datetime.fromisoformat(started[0]["time"]), datetime.fromisoformat(job["finished_at"])
    return start.timestamp(), end.timestamp()


def test_one_running_job_per_tenant_and_no_stall(stack: Stack, example_dir: Path) -> None:
    alpha, beta = stack.new_key(f"alpha-{secrets.token_hex(3)}"), stack.new_key(f"beta-{secrets.token_hex(3)}")
    with stack.api(alpha) as a, stack.api(beta) as b:
        spec_a: dict[str, Any] = example_spec(a.upload_examples(example_dir), pretrain=40)
        spec_b: dict[str, Any] = example_spec(b.upload_examples(example_dir), pretrain=12)
        first, second = a.submit(spec_a)["id"], a.submit(spec_a)["id"]
        a.wait_for(first, "train.step")
        theirs = b.submit(spec_b)["id"]
        a1, a2, b1 = ran(a, first), ran(a, second), ran(b, theirs)
    assert a2[0] >= a1[1], (a1, a2)  # alpha's second job started only once its first had ended
    assert b1[0] < a1[1], (a1, b1)  # beta's job ran beside alpha's first, not after alpha's queue
    logs = "".join(p.tail(200_000) for name, p in stack.procs.items() if name.startswith("worker"))
    assert "its tenant runs 1 jobs, its most" in logs
