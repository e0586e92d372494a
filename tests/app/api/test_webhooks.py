"""/v1/webhooks in process, over SQLite and PostgreSQL: register (the secret shown once),
list, get, delete; a webhook's deliveries with their outcomes; validation that names the field
(a private URL included); another tenant's webhook is a 404."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.config import Settings
from app.db import Database
from app.services import lifecycle, webhook_sender
from tests.app.api.conftest import Client, error
from tests.webhook_receiver import Receiver, verify

Tenant = Callable[[], tuple[dict[str, str], str]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test receiver's loopback address allowed by name, nothing else private; short retries."""
    return settings.model_copy(update={"webhook_allow_hosts": "127.0.0.1", "webhook_backoff_s": "0.1"})


def queued_job(database: Database, tenant_id: str) -> str:
    with database.write() as session:
        job, _ = lifecycle.create(session, tenant_id, "job", {"name": "job"}, {}, 10, None)
        session.commit()
    return job.id


def test_register_list_get_delete(client: Client) -> None:
    r = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/a", "description": "ops"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 30
    assert made["events"] == ["job.cancelled", "job.failed", "job.succeeded"]
    assert (made["object"], made["url"], made["description"]) == ("webhook", "http://127.0.0.1:9/a", "ops")
    second = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/b", "events": ["job.failed"]}).json()
    assert second["events"] == ["job.failed"] and second["description"] is None
    page = client.get("/v1/webhooks", params={"limit": 1}).json()
    assert [h["id"] for h in page["data"]] == [second["id"]] and page["has_more"]
    rest = client.get("/v1/webhooks", params={"after": page["next_cursor"]}).json()
    assert [h["id"] for h in rest["data"]] == [made["id"]] and not rest["has_more"]
    shown = client.get(f"/v1/webhooks/{made['id']}").json()
    assert "secret" not in shown and "secret" not in rest["data"][0]
    assert shown == {k: v for k, v in made.items() if k != "secret"}
    r = client.delete(f"/v1/webhooks/{made['id']}")
    assert r.json() == {"id": made["id"], "object": "webhook", "deleted": True}, r.text
    error(client.get(f"/v1/webhooks/{made['id']}"), 404, "not_found")
    error(client.delete(f"/v1/webhooks/{made['id']}"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "http://10.0.0.5/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "http://127.0.0.1/x", "events": ["job.started"]}, "events.0"),
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1/x", "description": "a\x00b"}, "description"),
        ({"url": "http://127.0.0.1/x", "secret": "mine"}, "secret"),
        ({"events": ["job.failed"]}, "url"),
        ({"url": 5}, "url"),
    ],
)
def test_invalid_fields_are_named(client: Client, body: dict[str, object], param: str) -> None:
    err = error(client.post("/v1/webhooks", json=body), 422, "invalid_request")
    assert err["param"] == param, err


def test_another_tenants_webhook_is_a_404(client: Client, new_tenant: Tenant) -> None:
    other, _ = new_tenant()
    theirs = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=other).json()["id"]
    for method, path in [("GET", ""), ("GET", "/deliveries"), ("DELETE", "")]:
        err = error(client.request(method, f"/v1/webhooks/{theirs}{path}"), 404, "not_found")
        assert theirs in err["message"]
    missing = "wh_0123456789abcdef0123456789abcd"
    assert error(client.get(f"/v1/webhooks/{missing}"), 404, "not_found")["message"] == f"no webhook '{missing}'"
    assert client.get("/v1/webhooks").json()["data"] == []
    assert client.get(f"/v1/webhooks/{theirs}", headers=other).status_code == 200


def test_deliveries_are_listed_with_their_outcomes(client: Client, database: Database, settings: Settings) -> None:
    with Receiver([503]) as receiver:
        made = client.post("/v1/webhooks", json={"url": receiver.url}).json()
        job_id = queued_job(database, client.tenant_id)
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        [pending] = client.get(f"/v1/webhooks/{made['id']}/deliveries").json()["data"]
        assert (pending["object"], pending["status"], pending["attempts"]) == ("webhook.delivery", "pending", 0)
        assert (pending["job_id"], pending["event_type"]) == (job_id, "job.cancelled")
        assert pending["webhook_id"] == made["id"]
        webhook_sender.run_once(database, settings)
        [retrying] = client.get(f"/v1/webhooks/{made['id']}/deliveries").json()["data"]
        assert (retrying["status"], retrying["attempts"], retrying["response_status"]) == ("pending", 1, 503)
        assert "503" in retrying["error"] and retrying["next_attempt_at"] is not None
        receiver.wait_for(1)
        while len(receiver.received) < 2:
            webhook_sender.run_once(database, settings)
    [done] = client.get(f"/v1/webhooks/{made['id']}/deliveries").json()["data"]
    assert (done["status"], done["attempts"], done["response_status"], done["error"]) == ("delivered", 2, 200, None)
    assert done["next_attempt_at"] is None and done["finished_at"] is not None
    event = verify(made["secret"], receiver.received[1].headers, receiver.received[1].body)
    assert event["id"] == done["event_id"] and event["data"]["job"]["id"] == job_id
