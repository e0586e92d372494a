"""What the service costs on top of the training core, in one run.

1. Queue latency: POST /v1/jobs to the job's first `train.step` event, with a warm worker
   (one job ran before), split into POST -> job.started (API, broker, claim) and
   job.started -> first step (the pipeline's own setup: data, tokenizer). Goal < 2 s.
   Embedded (`stagecraft up`: SQLite + the SQLAlchemy broker) and, with --redis and
   --postgres-admin, the production stack (PostgreSQL + Redis, separate API and worker).
2. Training throughput inside the service against its peer, `stagecraft train` on the same
   spec on this machine: median tokens/s of the training steps. Goal ratio >= 0.98.
3. GET /v1/jobs/{id} latency under C concurrent clients (default 200). Goal p99 < 100 ms.
   The clients run on the same machine, so their CPU use is part of the figure.

    .venv/bin/python benchmarks/service_overhead.py [--redis redis://127.0.0.1:6379 \\
        --postgres-admin postgresql://postgres@127.0.0.1/postgres] [--quick]

One JSON object goes to stdout, progress to stderr. --quick: tiny settings, to check it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready  # noqa: E402
from tests.system.stack import Api  # noqa: E402

WORDS = [
    "apples",
    "maps",
    "coins",
    "lamps",
    "books",
    "stamps",
    "tickets",
    "market",
    "library",
    "garden",
    "station",
    "museum",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_data(d: Path, docs: int) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12 + i % 9)) for i in range(docs)]
    (d / "corpus.txt").write_text("\n".join(lines) + "\n")
    return {"corpus": d / "corpus.txt"}


def spec(corpus: str, steps: int, n_embd: int, block: int, batch: int) -> dict[str, Any]:
    return {
        "name": "bench",
        "model": {"n_layer": 2, "n_head": 2, "n_embd": n_embd, "block_size": block},
        "tokenizer": {"vocab_size": 512, "train_on": ["corpus"]},
        "data": {"corpus": {"dataset": corpus, "validation_fraction": 0.0}},
        "stages": [
            {
                "type": "pretrain",
                "name": "pretrain",
                "data": "corpus",
                "steps": steps,
                "batch_size": batch,
                "loss": {"type": "causal_lm"},
                "optimizer": {"type": "adamw", "lr": 1e-3},
            }
        ],
        "evaluation": {"every_steps": 10_000_000, "metrics": ["loss"], "max_samples": 0},
        "checkpointing": {"every_steps": 10_000_000, "keep_last": 1},
        "precision": "fp32",
        "device": "cpu",
    }


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


def queue_latency(api: Api, job_spec: dict[str, Any], trials: int) -> dict[str, Any]:
    api.follow(api.submit(job_spec)["id"])  # warm the worker: imports, first kernels
    total, queue, setup = [], [], []
    for _ in range(trials):
        sent = time.time()
        job = api.submit(job_spec)
        events = api.follow(job["id"])
        started = next(e for e in events if e["type"] == "job.started")
        step = next(e for e in events if e["type"] == "train.step")
        total.append(ts(step) - sent)
        queue.append(ts(started) - sent)
        setup.append(ts(step) - ts(started))
    return {
        "post_to_first_step_s": round(statistics.median(total), 3),
        "post_to_job_started_s": round(statistics.median(queue), 3),
        "job_started_to_first_step_s": round(statistics.median(setup), 3),
        "max_post_to_first_step_s": round(max(total), 3),
        "trials": trials,
    }


def median_tps(events: list[dict[str, Any]]) -> float:
    return statistics.median(e["data"]["tokens_per_s"] for e in events if e["type"] == "train.step")


def throughput(api: Api, job_spec: dict[str, Any], local_spec: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    """Service and `stagecraft train` alternately, twice each; medians of the step figures."""
    service, local = [], []
    for i in range(2):
        service.append(median_tps(api.follow(api.submit(job_spec)["id"])))
        out = work / f"local-{i}"
        proc = run_cli("train", str(local_spec), "--out", str(out), env=env, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        local.append(median_tps([json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]))
    s, peer = statistics.median(service), statistics.median(local)
    return {
        "service_tokens_per_s": round(s, 1),
        "stagecraft_train_tokens_per_s": round(peer, 1),
        "ratio": round(s / peer, 4),
    }


async def get_latency(
    url: str, key: str, job_id: str, clients: int, per_client: int, interval: float
) -> dict[str, Any]:
    """Each client polls the job every `interval` seconds (0: back to back), as a dashboard or
    a `--wait` client would; every client keeps its own connection."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits) as http:

        async def client(i: int) -> None:
            await asyncio.sleep(interval * i / clients)  # spread the clients over the interval
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = await http.get(f"/v1/jobs/{job_id}", timeout=60)
                took = time.perf_counter() - t0
                latencies.append(took)
                assert r.status_code == 200
                await asyncio.sleep(max(0.0, interval - took))

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "interval_s": interval,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
    }


@contextmanager
def embedded(root: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    root.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(url=url, rate_limit_per_s="0")  # measuring the API, not its rate limit
    proc = Proc("up", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], env, root)
    proc.start()
    try:
        wait_ready(url, [proc])
        yield url, (root / "data" / "api_key").read_text().strip(), env
    finally:
        proc.stop()


@contextmanager
def production(root: Path, redis_url: str, pg_admin: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    root.mkdir(parents=True)
    name = f"stagecraft_bench_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    env = base_env(
        data_dir=str(root / "data"),
        database_url=db,
        broker_url=redis_url,
        queue=f"bench-{name}",
        url=url,
        rate_limit_per_s="0",
    )
    procs = []
    try:
        assert run_cli("migrate", env=env).returncode == 0
        key = run_cli("keys", "create", "--tenant", "bench", env=env).stdout.strip()
        procs = [Proc("api", [*stagecraft(), "api", "--port", str(port)], env, root).start()]
        procs.append(Proc("worker", [*stagecraft(), "worker"], env, root).start())
        wait_ready(url, procs)
        yield url, key, env
    finally:
        for p in procs:
            p.stop()
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(name: str, stack: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with stack as (url, key, env), Api(url, key) as api:
        data = write_data(work / "data", args.docs)
        corpus = api.upload(data["corpus"])["id"]
        log(f"[{name}] queue latency")
        result: dict[str, Any] = {"queue": queue_latency(api, spec(corpus, 3, 32, 32, 4), args.trials)}
        log(f"[{name}] throughput")
        shape = (args.steps, args.n_embd, args.block, args.batch)
        local_spec = work / "spec.json"
        local_spec.write_text(json.dumps(spec(str(data["corpus"]), *shape)))
        result["throughput"] = throughput(api, spec(corpus, *shape), local_spec, env, work)
        log(f"[{name}] GET latency")
        job_id = api.http.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
        result["get_job"] = asyncio.run(get_latency(url, key, job_id, args.clients, args.requests, args.interval))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", help="also measure the production stack with this Redis broker")
    p.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--docs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=10, help="GETs per client")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one client's GETs (0: no pause)")
    p.add_argument("--quick", action="store_true", help="tiny settings, to check that it runs")
    if "--quick" in sys.argv:
        p.set_defaults(trials=1, steps=5, n_embd=32, block=32, docs=300, clients=20, requests=2)
    args = p.parse_args()
    out: dict[str, Any] = {"settings": vars(args), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["embedded"] = measure("embedded", embedded(work / "embedded"), args, work / "e")
        if args.redis:
            stack = production(work / "production", args.redis, args.postgres_admin)
            out["postgres_redis"] = measure("postgres+redis", stack, args, work / "p")
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
