"""Faults against real processes (PostgreSQL, a redis-server of the test's own, an API and two
supervised workers): SIGKILL, SIGTERM, SIGSTOP, a Redis restart, a database outage and a kill
in the middle of a checkpoint write. After each, the job has succeeded with the weights of an
uninterrupted run and a record that matches one run: faults.assert_record."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.system.faults import (
    FaultStack,
    all_events,
    assert_record,
    fault_stack,
    kill,
    wait_finished,
    wait_step,
    wait_until,
    weights,
)
from tests.system.stack import example_spec, total_steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    # Step events flushed every 0.1 s (not 0.5): a worker then stores steps between two
    # checkpoints (5 steps apart) often enough for kill_between_checkpoints to catch it there.
    settings = {"max_attempts": "4", "resend_unclaimed_s": "5", "worker_idle_exit_s": "20", "event_flush_s": "0.1"}
    yield from fault_stack(tmp_path_factory.mktemp("faults"), **settings)


@pytest.fixture(scope="module")
def spec(stack: FaultStack, example_dir: Path) -> dict[str, Any]:
    with stack.api() as api:
        s = example_spec(api.upload_examples(example_dir), pretrain=30, finetune=12)
    s["checkpointing"] = {"every_steps": 5, "keep_last": 2}
    return s


@pytest.fixture(scope="module")
def reference(stack: FaultStack, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The uninterrupted run's weights."""
    with stack.api() as api:
        job = api.submit(spec)
        assert wait_finished(api, job["id"])["status"] == "succeeded"
    return weights(stack.workdir(job["id"]) / "model")


def attempts(api: Any, job_id: str) -> list[dict[str, Any]]:
    return [e for e in all_events(api, job_id) if e["type"] == "job.started"]


def kill_at(stack: FaultStack, job_id: str, step: int, n_started: int, sig: int) -> int:
    """Once attempt number `n_started` is running at `step` or later, send `sig` to its worker."""
    with stack.api() as api:
        wait_until(f"attempt {n_started}", lambda: len(attempts(api, job_id)) >= n_started)
        wait_step(api, job_id, step)
        pid = stack.worker_pid(all_events(api, job_id))
    kill(pid, sig)
    return pid


def kill_between_checkpoints(stack: FaultStack, job_id: str, step: int, n_started: int) -> tuple[int, int]:
    """SIGKILL attempt `n_started` once it has stored steps past its newest registered
    checkpoint (so the next attempt resumes from that checkpoint and supersedes them): seen
    while it runs, then confirmed with the worker frozen (SIGSTOP) and let go again if it
    moved on. Returns (the newest checkpoint's step, the newest stored step)."""

    def past_checkpoint(api: Any) -> tuple[int, int] | None:
        checkpoints = [c["step"] for c in api.http.get(f"/v1/jobs/{job_id}/checkpoints").json()]
        steps = [e["step"] for e in all_events(api, job_id) if e["type"] == "train.step"]
        return (max(checkpoints), steps[-1]) if checkpoints and steps and steps[-1] > max(checkpoints) else None

    pid = kill_at(stack, job_id, step, n_started, 0)  # signal 0: only find the worker
    with stack.api() as api:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if past_checkpoint(api):
                kill(pid, signal.SIGSTOP)
                if seen := past_checkpoint(api):
                    kill(pid, signal.SIGKILL)
                    return seen
                kill(pid, signal.SIGCONT)
            time.sleep(0.02)
    raise AssertionError("never caught the worker between two checkpoints")


def test_sigkill_at_random_steps_three_times(stack: FaultStack, spec: dict[str, Any], reference: Any) -> None:
    """Three SIGKILLs at random steps; the second lands after a checkpoint and before the
    next, so what that attempt reported past its checkpoint is superseded."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    total = total_steps(spec)
    targets = [rng.randint(3, 14), rng.randint(20, 32), rng.randint(38, total - 4)]
    with stack.api() as api:
        job_id = api.submit(spec)["id"]
    kill_at(stack, job_id, targets[0], 1, signal.SIGKILL)
    resumed_from, reached = kill_between_checkpoints(stack, job_id, targets[1], 2)
    kill_at(stack, job_id, targets[2], 3, signal.SIGKILL)
    print(f"\nattempt 2 killed at step {reached}, after checkpoint {resumed_from}")
    out = assert_record(stack, job_id, spec, reference)
    started = [e["data"]["attempt"] for e in out["events"] if e["type"] == "job.started"]
    assert started == [1, 2, 3, 4], (seed, targets)
    lost = [e["data"]["losses"] for e in out["events"] if e["type"] == "job.queued" and "losses" in e["data"]]
    assert lost == [1, 2, 3]
    restarts = [e["data"]["from_step"] for e in out["events"] if e["type"] == "job.restarted"]
    assert len(restarts) == 3 and restarts[1] == resumed_from, (restarts, resumed_from, reached)
    # attempt 2's train.step events after its checkpoint were stored, then superseded
    assert out["superseded_steps"] >= reached - resumed_from > 0, (out["superseded_steps"], resumed_from, reached)


def test_sigterm_three_times_then_sigkill_succeeds(stack: FaultStack, spec: dict[str, Any], reference: Any) -> None:
    """Hand-backs do not count toward max_attempts (4 here): with the old count the fourth
    attempt's loss failed the job as worker_lost."""
    with stack.api() as api:
        job_id = api.submit(spec)["id"]
    for i, (step, sig) in enumerate([(6, signal.SIGTERM), (16, signal.SIGTERM), (26, signal.SIGTERM)]):
        kill_at(stack, job_id, step, i + 1, sig)
    kill_at(stack, job_id, 36, 4, signal.SIGKILL)
    out = assert_record(stack, job_id, spec, reference)
    reasons = [e["data"]["reason"] for e in out["events"] if e["type"] == "job.queued" and "reason" in e["data"]]
    assert sum("shut down" in r for r in reasons) == 3 and reasons.count("worker lost") == 1
    assert out["job"]["attempt"] == 5


def test_sigstop_past_the_lease_then_sigcont(stack: FaultStack, spec: dict[str, Any], reference: Any) -> None:
    """The stalled worker loses its job to the other; woken, it writes nothing more."""
    with stack.api() as api:
        job_id = api.submit(spec)["id"]
    pid = kill_at(stack, job_id, 8, 1, signal.SIGSTOP)
    try:
        with stack.api() as api:
            wait_until("another worker's attempt", lambda: len(attempts(api, job_id)) >= 2)
            started = len(all_events(api, job_id))
            wait_until(
                "the new owner's next checkpoint",
                lambda: any(e["type"] == "checkpoint.saved" for e in all_events(api, job_id)[started:]),
            )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_record(stack, job_id, spec, reference)
    stalled = next(w for w in stack.workers if w.pid == pid)
    wait_until("the stalled worker to notice", lambda: "lease lost" in stalled.proc.tail(20000), timeout=60)


def test_redis_restart_with_a_job_running_and_one_queued(
    stack: FaultStack, spec: dict[str, Any], reference: Any
) -> None:
    """The running job goes on; the queued one's message is lost with Redis and is sent again;
    the worker consumes again (or exits for its supervisor to restart it)."""
    stack.workers[1].pause()
    try:
        with stack.api() as api:
            running = api.submit(spec)["id"]
            wait_step(api, running, 3)
            queued = api.submit(spec)["id"]
            assert api.job(queued)["status"] == "queued"
        stack.redis.stop()
        time.sleep(1)  # Redis is down: the running job's worker goes on without it
        stack.redis.start()
        assert_record(stack, running, spec, reference)
        assert_record(stack, queued, spec, reference)
    finally:
        stack.workers[1].resume()


def test_database_outage(stack: FaultStack, spec: dict[str, Any], reference: Any) -> None:
    """~15 s without the database: every route answers 503 with Retry-After, /readyz names the
    component and nothing of its address; the workers log the outage once, keep their events
    and, once it is back, the job completes with nothing lost."""
    logs = {w.proc.name: len(w.proc.tail(10**9)) for w in stack.workers}
    with stack.api() as api:
        job_id = api.submit(spec)["id"]
        wait_step(api, job_id, 5)
        stack.pg.allow_connections(False)
        began = time.monotonic()
        try:
            for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", "/v1/jobs", "/v1/models"):
                r = wait_until(f"503 from {path}", lambda p=path: (r := api.http.get(p)).status_code == 503 and r)
                assert r.headers["Retry-After"] and r.json()["error"]["code"] == "unavailable", r.text
            ready = httpx.get(stack.url + "/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["error"]["details"] == [
                {"component": "database", "message": "the database is unreachable"}
            ]
            for secret in ("127.0.0.1", "5432", stack.pg.name, "psycopg"):
                assert secret not in ready.text
            time.sleep(max(0.0, 15 - (time.monotonic() - began)))
        finally:
            stack.pg.allow_connections(True)
    out = assert_record(stack, job_id, spec, reference)
    for w in stack.workers:
        during = w.proc.tail(10**9)[logs[w.proc.name] :]
        assert during.count("unreachable while") <= 3, during[-3000:]  # reporter, reaper, finishing
        assert "Traceback" not in during, during[-3000:]
    assert out["job"]["status"] == "succeeded"


def test_kill_during_a_checkpoint_write(stack: FaultStack, spec: dict[str, Any], reference: Any) -> None:
    """SIGKILL the worker while a checkpoint is staged but not yet published (caught by
    watching its staging folder), at up to three checkpoints."""
    caught: list[tuple[int, bool]] = []
    with stack.api() as api:
        job_id = api.submit(spec)["id"]
        for n in range(1, 4):
            wait_until(f"attempt {n}", lambda n=n: len(attempts(api, job_id)) >= n)
            pid = stack.worker_pid(all_events(api, job_id))
            staging = stack.workdir(job_id) / "staging" / f"attempt-{n}" / "checkpoints"
            stop = threading.Event()
            hit = _kill_when_staged(staging, pid, stop, time.monotonic() + 60)
            if hit is None:
                break
            caught.append(hit)
    assert caught, "no checkpoint write was caught"
    assert_record(stack, job_id, spec, reference)


def _kill_when_staged(staging: Path, pid: int, stop: threading.Event, deadline: float) -> tuple[int, bool] | None:
    """Poll for a staged checkpoint and SIGKILL `pid` the moment one appears: (its step,
    whether its final folder already existed)."""
    while time.monotonic() < deadline and not stop.is_set():
        try:
            entries = os.listdir(staging)
        except FileNotFoundError:
            entries = []
        if entries:
            kill(pid)
            step = int(entries[0].split("-")[1])
            final = staging.parents[2] / "checkpoints" / entries[0]
            return step, final.exists()
        time.sleep(0.0005)
    return None
