"""Rate limits per API key (429 + Retry-After; in process, and shared through Redis), job and
storage quotas per tenant (429 `quota_exceeded`), spec resource limits (422
`resource_limit_exceeded`, the same from /v1/jobs/validate as from POST /v1/jobs)."""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from tests.app.api.conftest import Client, error
from tests.conftest import BASE_SPEC, corpus_texts, record_objects

Tenant = Callable[[], tuple[dict[str, str], str]]
REDIS = os.environ.get("STAGECRAFT_TEST_REDIS", "redis://127.0.0.1:6379")


def limited(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


def test_rate_limit_per_key_is_429_with_retry_after(settings: Settings, new_tenant: Tenant) -> None:
    (mine, _), (theirs, _) = new_tenant(), new_tenant()
    app = create_app(limited(settings, rate_limit_per_s=0.2, rate_limit_burst=3))
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.get("/v1/jobs", headers=mine).status_code == 200
        r = c.get("/v1/jobs", headers=mine)
        error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        # a JSON body is refused before it is read; another key is not limited
        error(c.post("/v1/jobs/validate", json={"name": "x"}, headers=mine), 429, "rate_limited")
        assert c.get("/v1/jobs", headers=theirs).status_code == 200


def test_rate_limits_are_shared_through_redis(settings: Settings, new_tenant: Tenant) -> None:
    try:
        redis.Redis.from_url(REDIS).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS}")
    mine, _ = new_tenant()
    shared = limited(settings, rate_limit_per_s=0.2, rate_limit_burst=4, redis_url=f"{REDIS}/{random.randint(1, 15)}")
    with (
        TestClient(create_app(shared), raise_server_exceptions=False) as a,
        TestClient(create_app(shared), raise_server_exceptions=False) as b,
    ):
        assert [a.get("/v1/jobs", headers=mine).status_code for _ in range(2)] == [200, 200]
        assert [b.get("/v1/jobs", headers=mine).status_code for _ in range(2)] == [200, 200]
        r = a.get("/v1/jobs", headers=mine)
        error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1


def datasets(c: TestClient, headers: dict[str, str]) -> dict[str, str]:
    corpus = "\n".join(corpus_texts(60)).encode()
    pairs = "".join(json.dumps(o) + "\n" for o in record_objects(40)).encode()
    ids = {}
    for name, data in (("corpus.txt", corpus), ("pairs.jsonl", pairs)):
        r = c.post("/v1/datasets", files={"file": (name, data)}, headers=headers)
        assert r.status_code == 201, r.text
        ids[name.split(".")[0]] = r.json()["id"]
    return ids


def spec_for(ids: dict[str, str]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec["data"]["corpus"]["dataset"], spec["data"]["pairs"]["dataset"] = ids["corpus"], ids["pairs"]
    return spec


def test_queued_jobs_quota(settings: Settings, new_tenant: Tenant) -> None:
    (mine, _), (theirs, _) = new_tenant(), new_tenant()
    with TestClient(create_app(limited(settings, tenant_max_queued_jobs=1)), raise_server_exceptions=False) as c:
        spec = spec_for(datasets(c, mine))
        assert c.post("/v1/jobs", json=spec, headers=mine).status_code == 201
        err = error(c.post("/v1/jobs", json=spec, headers=mine), 429, "quota_exceeded")
        assert "TENANT_MAX_QUEUED_JOBS" in err["message"]
        their_spec = spec_for(datasets(c, theirs))
        assert c.post("/v1/jobs", json=their_spec, headers=theirs).status_code == 201


def test_storage_quota(settings: Settings, new_tenant: Tenant) -> None:
    mine, tenant_id = new_tenant()
    with TestClient(create_app(limited(settings, tenant_max_storage_bytes=5000)), raise_server_exceptions=False) as c:
        ok = c.post("/v1/datasets", files={"file": ("a.txt", b"hello there\n" * 300)}, headers=mine)
        assert ok.status_code == 201, ok.text
        r = c.post("/v1/datasets", files={"file": ("b.txt", b"hello there\n" * 300)}, headers=mine)
        assert "TENANT_MAX_STORAGE_BYTES" in error(r, 429, "quota_exceeded")["message"]
        left = sorted(p.name for p in (settings.datasets_dir / tenant_id).iterdir())
        assert len(left) == 1 and not left[0].startswith(".incoming"), left


@pytest.mark.parametrize("path", ["/v1/jobs/validate", "/v1/jobs"])
@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (lambda s: s["model"].update(n_layer=96, n_embd=12288, n_head=96), "model"),
        (lambda s: s["stages"][0].update(steps=2_000_000), "stages"),
        (lambda s: s.update(checkpointing={"every_steps": 1}), "checkpointing.every_steps"),
    ],
)
def test_spec_resource_limits(
    settings: Settings, client: Client, path: str, change: Callable[[dict[str, Any]], None], loc: str
) -> None:
    strict = limited(settings, max_job_checkpoints=10)
    with TestClient(create_app(strict), headers=dict(client.headers), raise_server_exceptions=False) as c:
        spec = spec_for(datasets(c, {}))
        change(spec)
        err = error(c.post(path, json=spec), 422, "resource_limit_exceeded")
        assert loc in {d["loc"] for d in err["details"]}, err
        assert c.get("/v1/jobs").json()["data"] == []


def test_storage_quota_counts_job_folders(settings: Settings, new_tenant: Tenant) -> None:
    """Checkpoints on disk count: once a job's folder takes the tenant past its quota, it can
    neither submit nor upload; another tenant can; deleting the job frees the space."""
    (mine, tenant_id), (theirs, _) = new_tenant(), new_tenant()
    strict = limited(settings, tenant_max_storage_bytes=200_000)
    with TestClient(create_app(strict), raise_server_exceptions=False) as c:
        spec = spec_for(datasets(c, mine))
        job = c.post("/v1/jobs", json=spec, headers=mine).json()
        checkpoint = settings.jobs_dir / job["id"] / "checkpoints" / "step-00000001"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(b"\0" * 200_000)  # as a worker would write it
        err = error(c.post("/v1/jobs", json=spec, headers=mine), 429, "quota_exceeded")
        assert "TENANT_MAX_STORAGE_BYTES" in err["message"] and "jobs" in err["message"]
        r = c.post("/v1/datasets", files={"file": ("c.txt", b"hello there\n")}, headers=mine)
        error(r, 429, "quota_exceeded")
        assert c.post("/v1/jobs", json=spec_for(datasets(c, theirs)), headers=theirs).status_code == 201
        assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=mine).status_code == 200
        assert c.delete(f"/v1/jobs/{job['id']}", headers=mine).status_code == 200
        assert not (settings.jobs_dir / job["id"]).exists() and tenant_id
        assert c.post("/v1/jobs", json=spec, headers=mine).status_code == 201
