"""The API's own CPU per `GET /v1/jobs/{id}`, without the network or a load generator: the
ASGI app (the one `stagecraft api` serves, all its middleware) is called in-process, one
request after another, and the process's CPU time is divided by the requests. A busy machine
moves this figure far less than a throughput run (`get_job_load.py`), so before/after
comparisons use it. SQLite in a fresh data directory, or --database-url.

    .venv/bin/python benchmarks/get_job_cpu.py [--requests 5000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.api.main import create_app
from app.config import Settings
from app.migrate import upgrade
from app.services import auth
from app.tables import Job, new_id


async def call(app: Any, path: str, key: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(app: Any, path: str, key: str, n: int, rounds: int) -> list[float]:
    for _ in range(200):  # warm: caches, pool, compiled statements
        assert await call(app, path, key) == 200
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            await call(app, path, key)
        out.append((time.process_time() - t0) * 1000 / n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--database-url", default="", help="default: SQLite in a fresh data directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=args.database_url, rate_limit_per_s=0)
        upgrade(settings.db_url)
        app = create_app(settings)
        with app.state.db.write() as session:
            key = auth.create_key(session, "bench")
            tenant_id = auth.tenant_of(session, auth.hash_key(key))
            job = Job(id=new_id("job"), tenant_id=tenant_id, name="bench", status="queued", spec={"name": "bench"})
            job.estimates, job.total_steps = {"parameters": 1}, 100
            session.add(job)
            session.commit()
        per_request = asyncio.run(run(app, f"/v1/jobs/{job.id}", key, args.requests, args.rounds))
    report = {
        "database": "sqlite" if not args.database_url else args.database_url.split("+")[0].split(":")[0],
        "cpu_ms_per_request_min": round(min(per_request), 3),
        "cpu_ms_per_request_median": round(statistics.median(per_request), 3),
        "rounds": [round(x, 3) for x in per_request],
        "load": os.getloadavg(),
    }
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
