"""Webhooks over real processes (PostgreSQL, Redis, `stagecraft api`, `stagecraft worker`): a
tiny job trained to its end is announced once, signed, to a receiver on loopback (allowed by
the operator's setting), by the worker's sender thread; the delivery is listed as delivered."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.system.conftest import REDIS
from tests.system.faults import PgDatabase
from tests.system.processes import base_env, free_port, run_cli
from tests.system.stack import LEASE_S, Stack, example_spec
from tests.webhook_receiver import Receiver, verify

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url() -> Iterator[str]:
    """A database of its own: the session's other stacks run webhook senders too, without the
    setting that allows a loopback target, and would claim (and refuse) this test's delivery."""
    pg = PgDatabase()
    yield pg.url
    pg.drop()


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS).ping()
    port = free_port()
    env = base_env(
        data_dir=str(tmp_path / "data"),
        database_url=database_url,
        broker_url=f"{REDIS}/{random.randint(1, 15)}",
        queue=f"train-{secrets.token_hex(4)}",
        lease_s=str(LEASE_S),
        url=f"http://127.0.0.1:{port}",
        webhook_allow_private="true",
        webhook_poll_s="0.5",
    )
    assert run_cli("migrate", env=env).returncode == 0
    s = Stack(f"http://127.0.0.1:{port}", env, "", tmp_path)
    s.key = s.new_key(f"hooks-{secrets.token_hex(3)}")
    s.start_api()
    s.start("worker", "worker")
    s.wait_ready()
    yield s
    s.stop_all()


def test_a_finished_job_is_announced_once(stack: Stack, example_dir: Path) -> None:
    with Receiver() as receiver, stack.api() as api:
        r = api.http.post("/v1/webhooks", json={"url": receiver.url, "description": "system test"})
        assert r.status_code == 201, r.text
        hook = r.json()
        job = api.submit(example_spec(api.upload_examples(example_dir), pretrain=4, finetune=4))
        events = api.follow(job["id"])
        assert events[-1]["type"] == "job.succeeded", events[-1]
        [got] = receiver.wait_for(1, timeout_s=60)
        time.sleep(2)  # a second sender round would have sent it again by now
        assert len(receiver.received) == 1
        event = verify(hook["secret"], got.headers, got.body)
        assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job["id"]
        assert event["data"]["job"]["model_id"] == api.job(job["id"])["model_id"] is not None
        assert event["data"]["event"]["seq"] == events[-1]["seq"]
        [d] = api.http.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
        assert (d["status"], d["attempts"], d["response_status"], d["event_id"]) == ("delivered", 1, 200, event["id"])
    worker_log = stack.procs["worker"].tail(200_000)
    assert f"webhook delivery {d['id']}" in worker_log
