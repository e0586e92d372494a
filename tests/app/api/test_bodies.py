"""JSON bodies: authenticated before they are read, size-capped (413), nesting-bounded (400),
never a 500; spec strings PostgreSQL cannot store and out-of-range cursors are 4xx that
name the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import Database
from app.services import lifecycle
from tests.app.api.conftest import Client, error
from tests.conftest import BASE_SPEC


def deep(n: int) -> bytes:
    return b'{"name": ' + b"[" * n + b"]" * n + b"}"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/validate", "/v1/models/model_x/generate"])
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_400(client: TestClient, path: str, depth: int) -> None:
    r = client.post(path, content=deep(depth), headers={"Content-Type": "application/json"})
    err = error(r, 400, "invalid_json")
    assert "nests more than 64" in err["message"]


def test_body_over_the_limit_is_413_and_unauthenticated_bodies_are_not_read(
    settings: Settings, client: TestClient
) -> None:
    big = b'{"name": "' + b"x" * settings.max_json_bytes + b'"}'
    error(client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"}), 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: the cap holds while streaming
        yield b'{"name": "'
        for _ in range(settings.max_json_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = client.post("/v1/jobs/validate", content=chunks(), headers={"Content-Type": "application/json"})
    error(r, 413, "payload_too_large")
    read = []

    def counted() -> Any:
        for _ in range(4):
            read.append(1)
            yield b" " * 65536

    anonymous = {"Authorization": "Bearer nope", "Content-Type": "application/json"}
    error(client.post("/v1/jobs", content=counted(), headers=anonymous), 401, "unauthorized")
    assert len(read) <= 1, "the body of an unauthenticated request was read"


def test_small_bodies_still_work(client: TestClient) -> None:
    error(client.post("/v1/jobs/validate", json={"name": "x"}), 422, "invalid_spec")
    r = client.post("/v1/jobs", content=b'{"name": "x",\n "seed": }', headers={"Content-Type": "application/json"})
    assert error(r, 400, "invalid_json")["details"][0]["line"] == 2
    error(client.post("/v1/models/model_x/generate", json={"prompt": "hi"}), 404, "not_found")
    error(client.post("/v1/models/model_x/generate", data={"prompt": "hi"}), 415, "unsupported_media_type")


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec["data"] = {"corpus": {"dataset": "ds_nope"}, "pairs": {"dataset": "ds_nope2"}}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/validate"])
@pytest.mark.parametrize(("name", "loc"), [("a\x00b", "name"), ("n" * 101, "name")])
def test_names_postgres_cannot_store_fail_validate_as_create(
    client: TestClient, path: str, name: str, loc: str
) -> None:
    err = error(client.post(path, json=spec_with(name=name)), 422, "invalid_spec")
    assert loc in {d["loc"] for d in err["details"]}


def test_nul_anywhere_in_the_spec_is_named(client: TestClient) -> None:
    spec = spec_with()
    spec["stages"][0]["name"] = "pre\x00train"
    err = error(client.post("/v1/jobs/validate", json=spec), 422, "invalid_spec")
    assert {d["loc"] for d in err["details"]} == {"stages.0.name"}


def test_event_cursors_past_int64_are_422(client: Client, database: Database) -> None:
    with database.write() as session:
        job, _ = lifecycle.create(session, client.tenant_id, "j", {"name": "j"}, {}, 10, None)
        session.commit()
    path = f"/v1/jobs/{job.id}/events"
    err = error(client.get(path, params={"after": 2**63}), 422, "invalid_request")
    assert "query.after" in {d["loc"] for d in err["details"]}
    for accept in ("application/json", "text/event-stream"):
        r = client.get(path, headers={"Last-Event-ID": str(2**64), "Accept": accept})
        assert {d["loc"] for d in error(r, 422, "invalid_request")["details"]} == {"header.last-event-id"}
    assert client.get(path, params={"after": 2**63 - 1}).json()["data"] == []
