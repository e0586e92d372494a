"""`GET /v1/jobs/{id}` under 200 concurrent clients, against `stagecraft api` over uvicorn.

For each database (SQLite in a fresh data directory; PostgreSQL in a fresh database) and
each `--workers` count, this starts `stagecraft migrate`, creates a key, submits one job
(no training worker runs, so it stays queued: the record is what is read), starts
`stagecraft api --workers N` with the rate limit off (STAGECRAFT_RATE_LIMIT_PER_S=0), and
drives it with `wrk` (a separate process, one thread, C) in two ways:

- `saturated`: 200 connections, each sending its next request as soon as the last answered
  (the most the API serves; latency is then ≈ 200 / throughput by Little's law);
- `paced`: 200 connections, each waiting `--think-ms` after every answer, as 200 polling
  dashboards would (the goal's 400 requests/s from 200 clients is one GET every 0.5 s each).

Also reported: the API's CPU per request (user + system of the API process and its uvicorn
workers, from /proc, over the saturated run). The load generator shares the machine's cores.

    apt-get install -y wrk
    .venv/bin/python benchmarks/get_job_load.py [--workers 1 2] [--db sqlite postgres] \\
        [--postgres-admin postgresql://postgres@127.0.0.1:5432/postgres] [--duration 20]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready  # noqa: E402
from tests.system.stack import Api  # noqa: E402

# wrk's Lua hooks: an optional pause after each answer, and the figures as one JSON line.
WRK_LUA = """
local think = tonumber(os.getenv("THINK_MS") or "0")
function delay() if think > 0 then return math.random(math.floor(think / 2), math.floor(think * 3 / 2)) end return 0 end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""

SPEC = {
    "name": "bench-get",
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
    "tokenizer": {"vocab_size": 300, "train_on": ["corpus"]},
    "data": {"corpus": {"dataset": "", "validation_fraction": 0.0}},
    "stages": [
        {
            "type": "pretrain",
            "name": "pretrain",
            "data": "corpus",
            "steps": 100,
            "batch_size": 4,
            "loss": {"type": "causal_lm"},
            "optimizer": {"type": "adamw", "lr": 1e-3},
        }
    ],
    "checkpointing": {"every_steps": 50, "keep_last": 1},
    "precision": "fp32",
    "device": "cpu",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo, tick = 0.0, [root_pid], os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(pid, []))
    return total


def wrk(url: str, key: str, connections: int, duration: int, think_ms: int, script: Path) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "-s", str(script)]
    argv += ["-H", f"Authorization: Bearer {key}", url]
    env = {**os.environ, "THINK_MS": str(think_ms)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 60, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    raw = json.loads(lines[-1])
    seconds = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "think_ms": think_ms,
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p90_ms": round(raw["p90_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "socket_errors": raw["errors"],
        "non_2xx": raw["non_2xx"],
    }


@contextmanager
def database(kind: str, root: Path, pg_admin: str) -> Iterator[dict[str, str]]:
    """Settings for a fresh database of this kind (dropped afterwards)."""
    if kind == "sqlite":
        yield {}
        return
    name = f"stagecraft_bench_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield {"database_url": f"{base}/{name}"}
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(kind: str, workers: int, args: argparse.Namespace, root: Path, script: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    with database(kind, root, args.postgres_admin) as db:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = base_env(data_dir=str(root / "data"), url=url, rate_limit_per_s="0", **db)
        assert run_cli("migrate", env=env).returncode == 0
        key = run_cli("keys", "create", "--tenant", "bench", env=env).stdout.strip()
        api = Proc("api", [*stagecraft(), "api", "--port", str(port), "--workers", str(workers)], env, root).start()
        try:
            wait_ready(url, [api])
            assert api.popen is not None
            corpus = root / "corpus.txt"
            corpus.write_text("".join(f"line {i} of the corpus, some words\n" for i in range(200)))
            with Api(url, key) as client:
                spec = json.loads(json.dumps(SPEC))
                spec["data"]["corpus"]["dataset"] = client.upload(corpus)["id"]
                job_url = f"{url}/v1/jobs/{client.submit(spec)['id']}"
            wrk(job_url, key, args.clients, 3, 0, script)  # warm-up: connections, caches, pools
            cpu0 = cpu_seconds(api.popen.pid)
            saturated = wrk(job_url, key, args.clients, args.duration, 0, script)
            saturated["api_cpu_ms_per_request"] = round(
                (cpu_seconds(api.popen.pid) - cpu0) * 1000 / max(1, saturated["requests"]), 2
            )
            paced = wrk(job_url, key, args.clients, args.duration, args.think_ms, script)
        finally:
            api.stop()
    return {"database": kind, "workers": workers, "saturated": saturated, "paced": paced}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="uvicorn worker processes")
    p.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    p.add_argument("--think-ms", type=int, default=400, help="paced run: mean pause after each answer")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    out: dict[str, Any] = {"settings": vars(args), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "wrk.lua"
        script.write_text(WRK_LUA)
        for kind in args.db:
            for n in args.workers:
                log(f"[{kind}, {n} worker(s)]")
                runs.append(measure(kind, n, args, Path(tmp) / f"{kind}-{n}", script))
                log(json.dumps(runs[-1]))
                time.sleep(1)
    out["runs"] = runs
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
