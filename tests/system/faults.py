"""The production layout with faults to inject: its own redis-server (to restart), its own
PostgreSQL database (to make unreachable), an API and two workers, each worker restarted
when it exits as a process supervisor would (compose's `restart: unless-stopped`); and
what every fault test checks about a job's record afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import torch
from safetensors.torch import load_file

from tests.conftest import PG_ADMIN
from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready
from tests.system.stack import PROCS, Api, total_steps

LEASE_S = 3
WAIT_S = 300  # generous: two cores shared with other test sessions


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT_S, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """A redis-server of this test's own, without persistence: a restart loses every message."""

    def __init__(self, root: Path):
        self.port, self.root = free_port(), root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*argv, "--dir", str(self.root)], stdout=subprocess.DEVNULL)
        import redis

        wait_until("redis-server", lambda: _pings(redis.Redis(port=self.port)), timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class PgDatabase:
    """A PostgreSQL database of its own for a test or a stack (dropped by `drop()`); see
    allow_connections for an outage."""

    def __init__(self) -> None:
        self.name = f"stagecraft_test_{secrets.token_hex(4)}"
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        self.url = f"{base}/{self.name}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')

    def allow_connections(self, allow: bool) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
            if not allow:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [self.name])

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class Supervised:
    """A worker process started again whenever it exits, until `pause()`."""

    proc: Proc
    running: threading.Event = field(default_factory=threading.Event)
    starts: int = 0

    def __post_init__(self) -> None:
        self.running.set()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.running.wait()
            self.proc.start()
            self.starts += 1
            assert self.proc.popen is not None
            self.proc.popen.wait()
            time.sleep(0.5)

    @property
    def pid(self) -> int | None:
        p = self.proc.popen
        return p.pid if p is not None and p.poll() is None else None

    def pause(self) -> None:
        """Stop it (SIGTERM, a clean hand-back) and do not start it again until resume()."""
        self.running.clear()
        popen = self.proc.popen
        if popen is not None and popen.poll() is None:
            popen.terminate()
            popen.wait(120)

    def resume(self) -> None:
        self.running.set()


@dataclass
class FaultStack:
    url: str
    env: dict[str, str]
    root: Path
    redis: RedisServer
    pg: PgDatabase
    key: str = ""
    api_proc: Proc | None = None
    workers: list[Supervised] = field(default_factory=list)

    def api(self) -> Api:
        return Api(self.url, self.key)

    def workdir(self, job_id: str) -> Path:
        return self.root / "data" / "jobs" / job_id

    def worker_pid(self, events: list[dict[str, Any]]) -> int:
        """The pid of the worker that started the newest attempt (its id is host:pid:tag)."""
        started = [e for e in events if e["type"] == "job.started"]
        return int(started[-1]["data"]["worker"].split(":")[1])

    def stop(self) -> None:
        for w in self.workers:
            w.pause()
        if self.api_proc is not None:
            self.api_proc.stop()


def fault_stack(root: Path, **settings: str) -> Iterator[FaultStack]:
    redis_server = RedisServer(root)
    redis_server.start()
    pg = PgDatabase()
    port = free_port()
    env = base_env(
        data_dir=str(root / "data"),
        database_url=pg.url,
        broker_url=redis_server.url,
        url=f"http://127.0.0.1:{port}",
        lease_s=str(LEASE_S),
        **settings,
    )
    stack = FaultStack(f"http://127.0.0.1:{port}", env, root, redis_server, pg)
    try:
        assert run_cli("migrate", env=env).returncode == 0
        made = run_cli("keys", "create", "--tenant", "faults", env=env)
        assert made.returncode == 0, made.stderr
        stack.key = made.stdout.strip()
        stack.api_proc = Proc("faults-api", [*stagecraft(), "api", "--port", str(port)], env, root).start()
        PROCS.append(stack.api_proc)
        for i in (1, 2):
            proc = Proc(f"faults-worker{i}", [*stagecraft(), "worker"], env, root)
            PROCS.append(proc)
            stack.workers.append(Supervised(proc))
        wait_ready(stack.url, [stack.api_proc])
        yield stack
    finally:
        stack.stop()
        redis_server.stop()
        pg.drop()


def all_events(api: Api, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = api.http.get(f"/v1/jobs/{job_id}/events", params={"after": out[-1]["seq"] if out else 0, "limit": 1000})
        assert page.status_code == 200, page.text
        out += page.json()["data"]
        if not page.json()["has_more"]:
            return out


def wait_finished(api: Api, job_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        try:
            job = api.job(job_id)
        except Exception:  # the API may answer 503 during a fault
            return None
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    finished: dict[str, Any] = wait_until(f"job {job_id} to finish", done, timeout)
    return finished


def wait_step(api: Api, job_id: str, step: int) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(f"step {step}", lambda: (j := api.job(job_id))["step"] >= step and j, every=0.05)
    return job


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_record(stack: FaultStack, job_id: str, spec: dict[str, Any], reference: dict[str, torch.Tensor]) -> dict:
    """What every fault test asserts: the job succeeded with the weights of an uninterrupted
    run; its record has one train.step per step, each stage's events once, no evaluation
    twice; its checkpoint rows are exactly the checkpoints on disk; no staging left."""
    api = stack.api()
    job = wait_finished(api, job_id)
    assert job["status"] == "succeeded", job
    events = all_events(api, job_id)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    total = total_steps(spec)
    assert [e["step"] for e in events if e["type"] == "train.step"] == list(range(1, total + 1))
    names = [s["name"] for s in spec["stages"]]
    for kind in ("stage.started", "stage.completed"):
        assert [e["stage"]["name"] for e in events if e["type"] == kind] == names, kind
    evals = [(e["stage"] and e["stage"]["name"], e["step"], e["data"]["data"]) for e in events if e["type"] == "eval"]
    assert len(evals) == len(set(evals)), "an evaluation appears twice"
    saved = [e["step"] for e in events if e["type"] == "checkpoint.saved"]
    assert len(saved) == len(set(saved)), "a checkpoint.saved twice"
    assert events[-1]["type"] == "job.succeeded"
    rows = sorted(c["step"] for c in api.http.get(f"/v1/jobs/{job_id}/checkpoints").json())
    on_disk = sorted(int(p.name.split("-")[1]) for p in (stack.workdir(job_id) / "checkpoints").glob("step-*"))
    assert rows == on_disk and rows, (rows, on_disk)
    assert not (stack.workdir(job_id) / "staging").exists()
    got = weights(stack.workdir(job_id) / "model")
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got), "weights differ from the uninterrupted run"
    api.http.close()
    with psycopg.connect(stack.pg.url.replace("+psycopg", "")) as conn:
        stored, superseded, superseded_steps = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE superseded),"
            " count(*) FILTER (WHERE superseded AND type = 'train.step') FROM job_events WHERE job_id = %s",
            [job_id],
        ).fetchone() or (0, 0, 0)
    print(
        f"\n{job_id}: attempt {job['attempt']}, {len(events)} events in the record,"
        f" {stored} stored, {superseded} superseded"
    )
    return {"job": job, "events": events, "superseded_steps": superseded_steps}


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
