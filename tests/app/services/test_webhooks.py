"""Webhooks against SQLite and PostgreSQL: a job's final event writes its deliveries in the
transaction that ends the job, and the sender (driven here round by round) delivers each once,
signed, to a real HTTP server on loopback; retries with backoff; gives up, recorded; never
sends one delivery twice at once; refuses private targets unless the operator allows them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.errors import Invalid, NotFound
from app.services import auth, lifecycle, webhook_sender, webhook_targets, webhooks
from app.tables import Job, Webhook, WebhookDelivery
from models.events import make
from tests.webhook_receiver import Receiver, verify

Hook = Callable[..., Webhook]


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Loopback targets allowed (the test receiver), short retries."""
    return settings.model_copy(
        update={"webhook_allow_private": True, "webhook_backoff_s": "0.2", "webhook_timeout_s": 5.0}
    )


@pytest.fixture
def new_hook(database: Database, hook_settings: Settings, tenant: str) -> Iterator[Hook]:
    """`new_hook(url, events=None)`: a webhook of the test's tenant (committed; deleted, with
    its deliveries, at the end, so that no later test's sender finds them)."""
    made: list[Webhook] = []

    def make_hook(url: str, events: list[str] | None = None, tenant_id: str = tenant) -> Webhook:
        with database.write() as session:
            hook = webhooks.create(session, hook_settings, tenant_id, url, events, "test")
            session.commit()
        made.append(hook)
        return hook

    yield make_hook
    with database.write() as session:
        for hook in made:
            webhooks.remove(session, hook.tenant_id, hook.id)
        session.commit()


def deliveries(database: Database, hook: Webhook) -> list[WebhookDelivery]:
    with database.read() as session:
        stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
        return list(session.scalars(stmt.order_by(WebhookDelivery.id)))


def send_until(database: Database, settings: Settings, done: Callable[[], bool], timeout_s: float = 30) -> None:
    """Sender rounds until `done()` (the backoff waits between them pass in real time)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the deliveries did not settle"
        webhook_sender.run_once(database, settings)
        time.sleep(0.05)


def run_and_finish(database: Database, job_id: str, how: str) -> None:
    """End a queued job `how`: succeeded / failed (its worker's finish) or cancelled (while queued)."""
    with database.write() as session:
        if how == "cancelled":
            lifecycle.cancel(session, session.get_one(Job, job_id).tenant_id, job_id)
        else:
            claim = lifecycle.claim(session, job_id, "w1", 30.0)
            assert isinstance(claim, lifecycle.Claim)
            if how == "succeeded":
                lifecycle.finish(session, claim, "succeeded", make("job.succeeded", 10, {"steps": 10}), model_id=None)
            else:
                event = make("job.failed", 3, {"code": "user_error", "message": "the loss diverged"})
                lifecycle.finish(session, claim, "failed", event, error=("user_error", "the loss diverged"))
        session.commit()


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_each_final_event_is_delivered_once_signed(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str], how: str
) -> None:
    with Receiver() as receiver:
        hook = new_hook(receiver.url)
        only_failures = new_hook(receiver.url + "?failures", ["job.failed"])
        job_id = new_job()
        run_and_finish(database, job_id, how)
        [pending] = deliveries(database, hook)  # written with the job's end, before any send
        assert (pending.status, pending.attempts, pending.event_type) == ("pending", 0, f"job.{how}")
        send_until(database, hook_settings, lambda: deliveries(database, hook)[0].status != "pending")
        time.sleep(0.3)
        webhook_sender.run_once(database, hook_settings)  # nothing is left to send
        got = [r for r in receiver.received if r.path == "/hook"]
        assert len(got) == 1, got
        event = verify(hook.secret, got[0].headers, got[0].body)
        assert len(deliveries(database, only_failures)) == (1 if how == "failed" else 0)
    assert event["type"] == f"job.{how}" and event["object"] == "event"
    assert event["id"] == got[0].headers["stagecraft-event-id"] == pending.event_id
    assert got[0].headers["stagecraft-event-type"] == f"job.{how}"
    assert got[0].headers["stagecraft-webhook-id"] == hook.id
    assert got[0].headers["stagecraft-delivery-attempt"] == "1"
    job = event["data"]["job"]
    assert (job["id"], job["status"]) == (job_id, how)
    assert job["finished_at"] is not None
    assert (job["error"] or {}).get("code") == ("user_error" if how == "failed" else None)
    assert event["data"]["event"]["type"] == f"job.{how}" and event["data"]["event"]["seq"] >= 2
    [done] = deliveries(database, hook)
    assert (done.status, done.attempts, done.response_status, done.error) == ("delivered", 1, 200, None)
    assert done.next_attempt_at is None and done.finished_at is not None


def test_a_reaped_job_is_delivered_too(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str], job_of: Any
) -> None:
    """A final event no worker wrote (the lease lapsed max_attempts times: failed by a reaper)."""
    with Receiver() as receiver:
        hook = new_hook(receiver.url)
        job_id = new_job()
        for _ in range(hook_settings.max_attempts):
            with database.write() as session:
                assert isinstance(lifecycle.claim(session, job_id, "w1", 30.0), lifecycle.Claim)
                session.get_one(Job, job_id).lease_expires_at = datetime(2000, 1, 1, tzinfo=UTC)
                session.commit()
            with database.write() as session:
                lifecycle.reap(session, hook_settings)
                session.commit()
        assert job_of(job_id).status == "failed"
        send_until(database, hook_settings, lambda: len(receiver.received) == 1)
        assert verify(hook.secret, receiver.received[0].headers, receiver.received[0].body)["type"] == "job.failed"


def test_a_rolled_back_end_leaves_no_delivery(
    database: Database, new_hook: Hook, new_job: Callable[..., str], tenant: str
) -> None:
    hook = new_hook("http://127.0.0.1:9/hook")
    job_id = new_job()
    with database.write() as session:
        lifecycle.cancel(session, tenant, job_id)
        assert session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == hook.id))
        session.rollback()
    assert deliveries(database, hook) == []


def test_a_target_answering_500_twice_gets_it_on_the_third_try(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    with Receiver([500, 500]) as receiver:
        hook = new_hook(receiver.url)
        run_and_finish(database, new_job(), "cancelled")
        webhook_sender.run_once(database, hook_settings)
        [first] = deliveries(database, hook)
        assert (first.status, first.attempts, first.response_status) == ("pending", 1, 500)
        assert first.error is not None and "500" in first.error and first.next_attempt_at is not None
        send_until(database, hook_settings, lambda: deliveries(database, hook)[0].status != "pending")
    assert len(receiver.received) == 3
    assert [r.headers["stagecraft-delivery-attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert len({r.headers["stagecraft-event-id"] for r in receiver.received}) == 1  # one event, three tries
    assert len({r.body for r in receiver.received}) == 1
    for r in receiver.received:
        verify(hook.secret, r.headers, r.body)
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:])]
    assert min(gaps) >= 0.2, gaps  # the backoff
    [done] = deliveries(database, hook)
    assert (done.status, done.attempts, done.response_status, done.error) == ("delivered", 3, 200, None)


def test_a_target_that_stays_down_ends_failed_with_its_error(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    with Receiver() as closed:
        url = closed.url  # nothing listens there once it is closed
    hook = new_hook(url)
    run_and_finish(database, new_job(), "cancelled")
    settings = hook_settings.model_copy(update={"webhook_max_attempts": 3})
    webhook_sender.run_once(database, settings)
    [after_one] = deliveries(database, hook)
    assert (after_one.status, after_one.attempts, after_one.response_status) == ("pending", 1, None)
    send_until(database, settings, lambda: deliveries(database, hook)[0].status != "pending")
    [failed] = deliveries(database, hook)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 3, None)
    assert failed.error is not None and "could not connect" in failed.error, failed.error


def test_redirects_are_not_followed(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    with Receiver() as elsewhere, Receiver([302], location=elsewhere.url) as receiver:
        hook = new_hook(receiver.url)
        run_and_finish(database, new_job(), "cancelled")
        webhook_sender.run_once(database, hook_settings)
        [d] = deliveries(database, hook)
        assert (d.status, d.response_status) == ("pending", 302) and "not followed" in (d.error or "")
        assert len(receiver.received) == 1 and elsewhere.received == []


def test_a_slow_target_is_cut_off_at_the_timeout(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    with Receiver(delay_s=3.0) as receiver:
        hook = new_hook(receiver.url)
        run_and_finish(database, new_job(), "cancelled")
        start = time.monotonic()
        webhook_sender.run_once(database, hook_settings.model_copy(update={"webhook_timeout_s": 1.0}))
        assert time.monotonic() - start < 2.5
    [d] = deliveries(database, hook)
    assert (d.status, d.response_status) == ("pending", None) and "within 1 s" in (d.error or ""), d.error


def test_two_senders_never_send_one_delivery_twice(
    database: Database, hook_settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    with Receiver(delay_s=0.1) as receiver:
        hook = new_hook(receiver.url)
        for _ in range(6):
            run_and_finish(database, new_job(), "cancelled")
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []

        def sender() -> None:
            barrier.wait()
            try:
                for _ in range(5):
                    webhook_sender.run_once(database, hook_settings)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    ids = [r.headers["stagecraft-delivery-id"] for r in receiver.received]
    assert len(ids) == 6 and len(set(ids)) == 6, ids
    assert {d.status for d in deliveries(database, hook)} == {"delivered"}


def test_the_target_is_checked_again_when_sent(
    database: Database, settings: Settings, new_hook: Hook, new_job: Callable[..., str]
) -> None:
    """Registered while loopback was allowed; a sender without the setting refuses to send."""
    with Receiver() as receiver:
        hook = new_hook(receiver.url)
        run_and_finish(database, new_job(), "cancelled")
        webhook_sender.run_once(database, settings)
        assert receiver.received == []
    [d] = deliveries(database, hook)
    assert d.status == "pending" and "loopback address" in (d.error or ""), d.error


def test_another_tenants_webhook_is_not_found(
    database: Database, new_hook: Hook, tenant: str, new_tenant_id: str
) -> None:
    theirs = new_hook("http://127.0.0.1:9/hook", tenant_id=new_tenant_id)
    with database.write() as session:
        for call in (webhooks.get, webhooks.remove):
            with pytest.raises(NotFound, match=theirs.id):
                call(session, tenant, theirs.id)
        with pytest.raises(NotFound):
            webhooks.deliveries(session, tenant, theirs.id, 10, None)
        assert webhooks.list_page(session, tenant, 10, None) == ([], False)
        assert webhooks.get(session, new_tenant_id, theirs.id).url == "http://127.0.0.1:9/hook"


@pytest.fixture
def new_tenant_id(database: Database) -> str:
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"other-{time.monotonic_ns()}").id
        session.commit()
    return tenant_id


REFUSED = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "ftp://93.184.215.14/hook",
    "http://user:pw@93.184.215.14/hook",
    "not a url",
    "http:///nohost",
    "http://93.184.215.14/\x00",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_and_odd_targets_are_refused(url: str, tmp_path: Any) -> None:
    with pytest.raises(Invalid) as refused:
        webhook_targets.check(url, Settings(data_dir=tmp_path))
    assert refused.value.details[0]["loc"] == "url" and refused.value.message.startswith("url: ")


def test_the_operator_allows_private_targets(tmp_path: Any) -> None:
    check = webhook_targets.check
    assert check("https://93.184.215.14/hook", Settings(data_dir=tmp_path)) == "https://93.184.215.14/hook"
    anything = Settings(data_dir=tmp_path, webhook_allow_private=True)
    assert check("http://127.0.0.1:8080/x", anything) == "http://127.0.0.1:8080/x"
    assert check("http://10.1.2.3/x", anything) == "http://10.1.2.3/x"
    for never in ("http://0.0.0.0/x", "http://224.0.0.1/x"):  # not even then
        with pytest.raises(Invalid):
            check(never, anything)
    some = Settings(data_dir=tmp_path, webhook_allow_hosts="127.0.0.0/8, hooks.internal")
    assert check("http://127.0.0.2/x", some) == "http://127.0.0.2/x"
    with pytest.raises(Invalid):
        check("http://10.1.2.3/x", some)
    named = Settings(data_dir=tmp_path, webhook_allow_hosts="localhost")
    assert check("http://localhost:8000/x", named) == "http://localhost:8000/x"
