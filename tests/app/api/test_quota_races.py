"""Quotas hold under concurrency, on PostgreSQL (SQLite's writers take turns anyway): 70
submits at once against a queued-jobs quota of 50 leave exactly 50 queued, and 20 uploads of
300 kB at once against a 3,000,000-byte storage quota store exactly the 10 that fit. The app
under uvicorn, each request from a thread of its own, all released together."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.tables import Dataset, Job
from tests.app.api.test_limits import spec_for
from tests.conftest import corpus_texts, record_objects

pytestmark = pytest.mark.parametrize("database", ["postgresql"], indirect=True)

Tenant = Callable[[], tuple[dict[str, str], str]]


def jsonl(objs: list[Any]) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def at_once(n: int, url: str, request: Callable[[httpx.Client], httpx.Response]) -> list[int]:
    """The statuses of `n` requests sent together, each on a connection of its own."""
    ready = threading.Barrier(n)

    def one(_: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as http:
            http.get("/healthz")  # connected before the barrier: the requests really overlap
            ready.wait()
            return request(http).status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_submits_leave_exactly_the_queued_quota(
    settings: Settings, database: Database, new_tenant: Tenant, serve: Callable[[FastAPI], str]
) -> None:
    headers, tenant_id = new_tenant()
    quota = settings.model_copy(update={"tenant_max_queued_jobs": 20, "tenant_max_unfinished_jobs": 1000})
    url = serve(create_app(quota))
    ids = {}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for name, data in (("corpus.txt", "\n".join(corpus_texts(60))), ("pairs.jsonl", jsonl(record_objects(40)))):
            r = http.post("/v1/datasets", files={"file": (name, data.encode())})
            assert r.status_code == 201, r.text
            ids[name.split(".")[0]] = r.json()["id"]
    spec = spec_for(ids)

    statuses = at_once(30, url, lambda http: http.post("/v1/jobs", json=spec, headers=headers))
    assert Counter(statuses) == {201: 20, 429: 10}, Counter(statuses)
    with database.read() as session:
        queued = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status == "queued"))
    assert queued == 20


def test_concurrent_uploads_never_pass_the_storage_quota(
    settings: Settings, database: Database, new_tenant: Tenant, serve: Callable[[FastAPI], str]
) -> None:
    headers, tenant_id = new_tenant()
    url = serve(create_app(settings.model_copy(update={"tenant_max_storage_bytes": 3_000_000})))
    line = b"At the market, Nadia has three apples.\n"
    text = (line * (300_000 // len(line) + 1))[:299_999] + b"\n"  # 300,000 bytes

    def upload(http: httpx.Client) -> Any:
        return http.post("/v1/datasets", files={"file": ("part.txt", text)}, headers=headers)

    statuses = at_once(20, url, upload)
    with database.read() as session:
        stored = session.scalar(select(func.sum(Dataset.bytes)).where(Dataset.tenant_id == tenant_id))
    assert Counter(statuses) == {201: 10, 429: 10} and stored == 3_000_000, (Counter(statuses), stored)
    left = [p.name for p in (settings.datasets_dir / tenant_id).iterdir() if p.name.startswith(".incoming")]
    assert not left, left
