"""X-Request-ID in process, over SQLite and PostgreSQL: a valid one is echoed and names the
request's log line; any other is replaced by a new one; the request that creates a job leaves
its id in the job's `job.queued` event, where a worker's claim reads it back."""

from __future__ import annotations

import re

import pytest

from app.db import Database
from app.services import lifecycle
from tests.app.api.conftest import Client
from tests.app.api.test_limits import datasets, spec_for
from tests.log_capture import captured, json_lines


def access_lines(text: str) -> list[dict[str, object]]:
    return [line for line in json_lines(text) if line["logger"] == "stagecraft.api.access"]


def test_a_valid_request_id_is_echoed_and_names_the_requests_log_line(client: Client) -> None:
    with captured("json") as out:
        r = client.get("/v1/jobs", headers={"X-Request-ID": "req-abc.123"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "req-abc.123"
    (line,) = [x for x in access_lines(out.getvalue()) if x["request_id"] == "req-abc.123"]
    assert (line["method"], line["path"], line["status"], line["tenant"]) == ("GET", "/v1/jobs", 200, client.tenant_id)
    assert isinstance(line["duration_ms"], float) and line["message"] == "GET /v1/jobs 200"


@pytest.mark.parametrize("given", [b"has space", b"x" * 129, b"caf\xc3\xa9"])
def test_an_invalid_request_id_is_replaced(client: Client, given: bytes) -> None:
    with captured("json") as out:
        r = client.get("/healthz", headers={b"X-Request-ID": given})
    made = r.headers["X-Request-ID"]
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", made)
    assert [x["request_id"] for x in access_lines(out.getvalue())] == [made]


def test_without_one_each_response_gets_its_own(client: Client) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert client.get("/nowhere", headers={"X-Request-ID": "req-404"}).headers["X-Request-ID"] == "req-404"


def test_the_request_that_creates_a_job_is_named_at_its_claim(client: Client, database: Database) -> None:
    spec = spec_for(datasets(client, {}))
    r = client.post("/v1/jobs", json=spec, headers={"X-Request-ID": "req-job-1"})
    assert r.status_code == 201 and r.headers["X-Request-ID"] == "req-job-1", r.text
    job_id = r.json()["id"]
    queued = client.get(f"/v1/jobs/{job_id}/events").json()["data"][0]
    assert queued["type"] == "job.queued" and queued["data"]["request_id"] == "req-job-1"
    with database.write() as session:
        claim = lifecycle.claim(session, job_id, "worker-1:x", 30.0)
        session.rollback()
    assert isinstance(claim, lifecycle.Claim) and claim.request_id == "req-job-1"
